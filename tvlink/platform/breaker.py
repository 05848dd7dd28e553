"""
The circuit breaker of one platform link slot: ejecting a link that keeps
timing out, probing it after a rest, and ramping its traffic back up.
"""

import random as _random


class CircuitBreaker:
    """
    Health of one link slot. C{eject_after} timeouts in a row eject it for
    C{cooldown} seconds; then it is probed with an echo test; once the
    probe is answered it takes a share of traffic that grows from 5% to
    all of it over C{ramp} seconds. A timeout while ramping ejects it
    again.

    @ivar state: C{"closed"} (healthy), C{"ejected"} or C{"recovering"}.
    """

    def __init__(self, clock, eject_after=5, cooldown=30.0, ramp=30.0, random=_random.random):
        self.clock = clock
        self.eject_after = eject_after
        self.cooldown = cooldown
        self.ramp = ramp
        self.random = random
        self.state = "closed"
        self.consecutive = 0
        self.since = clock.seconds()
        self.ejections = 0

    def answered(self):
        if self.state != "ejected":
            self.consecutive = 0

    def timedOut(self):
        """
        Count a timeout; return C{True} if the link is now ejected.
        """
        self.consecutive += 1
        if self.state == "recovering" or (
            self.state == "closed" and self.consecutive >= self.eject_after
        ):
            self.state = "ejected"
            self.since = self.clock.seconds()
            self.ejections += 1
            return True
        return False

    def probeAnswered(self):
        self.state = "recovering"
        self.consecutive = 0
        self.since = self.clock.seconds()

    def probeFailed(self):
        self.since = self.clock.seconds()

    def admits(self):
        """
        Whether the link may take the next request.
        """
        state = self.state
        if state == "closed":
            return True
        if state == "ejected":
            return False
        fraction = (self.clock.seconds() - self.since) / self.ramp
        if fraction >= 1.0:
            self.state = "closed"
            return True
        return self.random() < max(0.05, fraction)

    @property
    def degraded(self):
        return self.state == "recovering" or (self.state == "closed" and self.consecutive > 0)

