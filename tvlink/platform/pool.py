"""
Multi-point load-balanced access (多点负载均衡接入): choosing a payment
link for each request, and holding requests briefly while no link is
ready. Ejecting links that keep timing out is L{tvlink.platform.breaker}.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from tvlink.errors import NoLinkAvailable


class IBalancer(Interface):
    """
    Chooses the link for the next request.
    """

    def choose(candidates):
        """
        Return one of C{candidates} (a non-empty list of ready links that
        may take traffic, in configuration order; each has C{inFlight()}
        and C{group}), or C{None} to hold the request.
        """


@implementer(IBalancer)
class LeastPending:
    """
    The link with the fewest requests in flight; ties go round robin.
    """

    name = "least-pending"

    def __init__(self):
        self._turn = 0

    def choose(self, candidates):
        n = len(candidates)
        start = self._turn % n
        self._turn += 1
        best = None
        bestLoad = None
        for i in range(n):
            link = candidates[(start + i) % n]
            load = link.inFlight()
            if best is None or load < bestLoad:
                best, bestLoad = link, load
        return best


@implementer(IBalancer)
class RoundRobin:
    """
    Each ready link in turn. Dead links are not in the list at all, so
    their share spreads over every live link instead of falling on the
    next one in line.
    """

    name = "round-robin"

    def __init__(self):
        self._turn = 0

    def choose(self, candidates):
        link = candidates[self._turn % len(candidates)]
        self._turn += 1
        return link


@implementer(IBalancer)
class Primary:
    """
    Priority groups: the first group (lowest C{group}) with a ready link
    takes all traffic, least-pending inside the group; the next group only
    when none of the first is ready.
    """

    name = "primary"

    def __init__(self):
        self._inner = LeastPending()

    def choose(self, candidates):
        first = min(link.group for link in candidates)
        return self._inner.choose([link for link in candidates if link.group == first])


BALANCERS = {b.name: b for b in (LeastPending, RoundRobin, Primary)}


def getBalancer(name):
    """
    A new balancer by name, or the balancer itself if given an
    L{IBalancer} provider.
    """
    if IBalancer.providedBy(name):
        return name
    try:
        return BALANCERS[name]()
    except KeyError:
        raise ValueError(
            "unknown balance strategy %r (choose one of %s)" % (name, ", ".join(sorted(BALANCERS)))
        ) from None


class RequestQueue:
    """
    Requests waiting for a ready link: at most C{limit}, each for no longer
    than its own timeout.
    """

    log = Logger(namespace="tvlink.pool")

    def __init__(self, clock, limit=1000):
        self.clock = clock
        self.limit = limit
        #: The requests waiting, oldest first (true while any waits).
        self.waiting = []

    def __len__(self):
        return len(self.waiting)

    def wait(self, timeout):
        """
        Return a L{Deferred} that fires with the seconds left of C{timeout}
        when L{release} hands it a link slot, or fails with
        L{NoLinkAvailable} when C{timeout} runs out first.

        @raise NoLinkAvailable: at once, if the queue is full.
        """
        if len(self.waiting) >= self.limit:
            raise NoLinkAvailable(
                "no payment link available and %d requests already waiting" % (self.limit,)
            )
        entry = []
        d = Deferred(lambda d: self._remove(entry))
        call = self.clock.callLater(timeout, self._expire, entry, timeout)
        entry.extend((d, call, self.clock.seconds() + timeout))
        self.waiting.append(entry)
        return d

    def _remove(self, entry):
        if entry in self.waiting:
            self.waiting.remove(entry)
            entry[1].cancel()

    def _expire(self, entry, timeout):
        self.waiting.remove(entry)
        entry[0].errback(NoLinkAvailable("no payment link available within %gs" % (timeout,)))

    def release(self, count=None):
        """
        Fire up to C{count} (default: all) waiting requests, oldest first.
        """
        now = self.clock.seconds()
        n = len(self.waiting) if count is None else min(count, len(self.waiting))
        released, self.waiting = self.waiting[:n], self.waiting[n:]
        for d, call, deadline in released:
            call.cancel()
            d.callback(deadline - now)

    def failAll(self, reason):
        waiting, self.waiting = self.waiting, []
        for d, call, deadline in waiting:
            call.cancel()
            d.errback(reason)
