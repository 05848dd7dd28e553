"""
One link slot of the platform: the reconnecting client factory that keeps
one persistent link to one payment endpoint, signs it on, and watches its
health with a circuit breaker.
"""

import random

from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger

from tvlink.errors import RequestError
from tvlink.link import wire
from tvlink.link.factory import LINK_COUNTERS, LinkFactory
from tvlink.link.roundtrips import RoundTrips
from tvlink.link.settings import PLATFORM
from tvlink.platform.breaker import CircuitBreaker


class PlatformFactory(LinkFactory, ReconnectingClientFactory):
    """
    One link slot: keeps one link to one payment endpoint. It connects,
    signs on, and reconnects with jittered exponential backoff whenever the
    link closes or goes silent.

    The delay before attempt I{n} is drawn uniformly from the upper half of
    C{min(maxDelay, initialDelay * factor ** (n - 1))}: the first retry
    comes within C{initialDelay} (1 s), later ones never past C{maxDelay}
    (60 s), and platforms restarted together spread out. It is reset once
    the peer has sent a valid frame (L{linkProven}), not on connect.

    The slot outlives its connections: its counters, round trips and
    circuit breaker carry over reconnects.

    @ivar group: the priority group (0 first) of the endpoint.
    @ivar draining: no new requests go to this slot.
    @ivar link: the current connection, or C{None}.
    """

    role = PLATFORM
    noisy = False
    initialDelay = 1.0
    factor = 2.0
    maxDelay = 60.0
    log = Logger(namespace="tvlink.platform")

    def __init__(
        self, endpoint, settings, handler, random=random.random, group=0, slot=0, breaker=None
    ):
        self.setUp(settings, handler)
        self.endpoint = endpoint
        self.random = random
        self.group = group
        self.slot = slot
        self.delay = self.initialDelay
        self.reconnects = 0
        self.draining = False
        self.resumeWhenDrained = False
        self.link = None
        #: The pending reconnection (an L{IDelayedCall}), or C{None}.
        self.reconnectCall = None
        self.slotCounters = dict.fromkeys(LINK_COUNTERS, 0)
        self.slotRoundTrips = RoundTrips()
        self.breaker = breaker if breaker is not None else CircuitBreaker(settings.reactor)
        self.onLate = None
        #: Called with a count when that many requests on this slot end and
        #: free room on it.
        self.capacityFreed = lambda count=1: None
        #: Callables given C{(rtt, factory)} for every answered request.
        self.roundTripObservers = []

    def countersFor(self, link):
        return self.slotCounters

    def roundTripsFor(self, link):
        return self.slotRoundTrips

    def startedConnecting(self, connector):
        self.log.info(
            "link to {endpoint} connecting", link_event="connecting", endpoint=self.endpoint
        )

    def clientConnectionFailed(self, connector, reason):
        self.log.info(
            "link to {endpoint} could not connect: {why}",
            link_event="connect-failed",
            endpoint=self.endpoint,
            why=reason.getErrorMessage(),
        )
        ReconnectingClientFactory.clientConnectionFailed(self, connector, reason)

    def retry(self, connector=None):
        if not self.continueTrying:
            return
        if connector is None:
            connector = self.connector
        self.retries += 1
        if self.maxRetries is not None and self.retries > self.maxRetries:
            return
        ceiling = min(self.maxDelay, self.initialDelay * self.factor ** min(self.retries - 1, 64))
        self.delay = ceiling * (0.5 + 0.5 * self.random())
        self.reconnects += 1
        self.log.info(
            "link to {endpoint} retrying in {delay:.2f}s",
            link_event="retry",
            endpoint=self.endpoint,
            delay=self.delay,
        )
        self.reconnectCall = self.clock.callLater(self.delay, self._reconnect, connector)

    def _reconnect(self, connector):
        self.reconnectCall = None
        connector.connect()

    def stopTrying(self):
        """
        Cancel the reconnection this slot has scheduled, then stop trying.
        """
        call, self.reconnectCall = self.reconnectCall, None
        if call is not None and call.active():
            call.cancel()
        ReconnectingClientFactory.stopTrying(self)

    def linkUp(self, link):
        self.link = link
        link.group = self.group
        LinkFactory.linkUp(self, link)
        d = link.request({"mti": "0800", "nmi": wire.SIGN_ON})
        d.addCallbacks(self._signOnAnswered, self._signOnFailed, callbackArgs=(link,), errbackArgs=(link,))

    def _signOnAnswered(self, answer, link):
        if link.state != "up":
            return
        resp = answer.get("resp")
        if resp == wire.APPROVED:
            self.resetDelay()
            link.becomeReady()
        else:
            self.log.warn(
                "link {peer} sign-on refused with {resp}",
                link_event="sign-on-refused",
                peer=link.peer,
                resp=resp,
            )
            link.close("sign-on refused with %s" % (resp,))

    def _signOnFailed(self, failure, link):
        failure.trap(RequestError)
        if link.state == "up":
            self.log.warn(
                "link {peer} sign-on failed: {why}",
                link_event="sign-on-failed",
                peer=link.peer,
                why=failure.getErrorMessage(),
            )
            link.close("sign-on failed")

    def linkProven(self, link):
        """
        The peer sent a valid frame. The backoff is reset only once the
        sign-on is accepted: a node that answers but refuses us must not be
        hammered once a second.
        """

    def signOffReceived(self, link):
        """
        The payment node signed this link off: close it and connect again
        (with backoff), signing on afresh.
        """
        self.clock.callLater(0, link.close, "signed off by the payment node")

    def linkLost(self, link, why):
        if self.link is link:
            self.link = None
        LinkFactory.linkLost(self, link, why)

    def signOnReceived(self, link, message):
        return wire.INVALID_TRANSACTION

    def requestsAnswered(self, link, rtts):
        if self.breaker.consecutive:
            self.breaker.answered()
        self.capacityFreed(len(rtts))
        for observer in self.roundTripObservers:
            for rtt in rtts:
                observer(rtt, self)

    def lateResponse(self, link, key, message):
        LinkFactory.lateResponse(self, link, key, message)
        if self.onLate is not None:
            self.onLate(key, message)

    def requestTimedOut(self, link, key):
        LinkFactory.requestTimedOut(self, link, key)
        self.capacityFreed()
        breaker = self.breaker
        wasDegraded = breaker.degraded
        if breaker.timedOut():
            self.log.warn(
                "link to {endpoint} ejected after {count} timeouts in a row; probing in {cooldown}s",
                link_event="ejected",
                endpoint=self.endpoint,
                count=breaker.consecutive,
                cooldown=breaker.cooldown,
            )
            self.linkEvent("ejected", link)
            self.clock.callLater(breaker.cooldown, self.probe)
        elif breaker.degraded and not wasDegraded:
            self.log.warn(
                "link to {endpoint} degraded: a request timed out",
                link_event="degraded",
                endpoint=self.endpoint,
            )
            self.linkEvent("degraded", link)

    def probe(self):
        """
        Send an echo test on an ejected link; bring it back gradually if
        answered, try again after the cool-down if not.
        """
        breaker = self.breaker
        if breaker.state != "ejected" or not self.continueTrying:
            return
        link = self.link
        if link is None or not link.ready:
            breaker.probeFailed()
            self.clock.callLater(breaker.cooldown, self.probe)
            return
        d = link.request({"mti": "0800", "nmi": wire.ECHO_TEST}, timeout=min(self.settings.timeout, breaker.cooldown))
        d.addCallbacks(self._probed, self._probeFailed, callbackArgs=(link,), errbackArgs=(link,))

    def _probed(self, answer, link):
        if answer.get("resp") != wire.APPROVED:
            return self._probeFailed(None, link)
        self.breaker.probeAnswered()
        self.log.info(
            "link to {endpoint} answered its probe; taking traffic again over {ramp}s",
            link_event="recovering",
            endpoint=self.endpoint,
            ramp=self.breaker.ramp,
        )
        self.linkEvent("recovering", link)

    def _probeFailed(self, failure, link):
        self.breaker.probeFailed()
        self.log.warn(
            "link to {endpoint} failed its probe; still ejected",
            link_event="probe-failed",
            endpoint=self.endpoint,
        )
        self.clock.callLater(self.breaker.cooldown, self.probe)

    def stateName(self):
        """
        The slot's state as an operator sees it: C{connecting}, C{up},
        C{ready}, C{degraded}, C{ejected}, C{recovering}, C{draining},
        C{drained}.
        """
        link = self.link
        if self.draining:
            return "draining" if link is not None else "drained"
        if link is None:
            return "connecting"
        if link.state != "ready":
            return link.state
        if self.breaker.state == "ejected":
            return "ejected"
        if self.breaker.state == "recovering":
            return "recovering"
        if self.breaker.degraded:
            return "degraded"
        return "ready"
