"""
L{LinkFactory}: what the factories of both roles share, the settings, the
handler, the set of live links and the hooks a L{LinkProtocol} calls.
"""

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from tvlink.link import wire
from tvlink.link.limits import LimitLog
from tvlink.link.protocol import LinkProtocol
from tvlink.link.roundtrips import RoundTrips
from tvlink.link.settings import succeedWith

#: What every link counts.
LINK_COUNTERS = (
    "framesIn",
    "framesOut",
    "heartbeatsIn",
    "heartbeatsOut",
    "requestsIn",
    "requestsOut",
    "answered",
    "timedOut",
    "late",
    "formatErrors",
)



class LinkFactory:
    """
    What both roles' factories share: the settings, the handler, the set of
    live links and the hooks a L{LinkProtocol} calls. Subclasses mix this
    with a Twisted factory class.

    @ivar links: every connected link.
    @ivar readyLinks: links that are signed on, in the order they became
        ready.
    """

    protocol = LinkProtocol
    role = None
    #: This factory's own codec, when it differs from the settings' (a
    #: platform endpoint with its own C{--endpoint-codec}).
    codec = None
    log = Logger()

    #: Whether requests other than 0800 are refused (91) on a link that
    #: has not signed on.
    requireSignOn = False

    def setUp(self, settings, handler):
        self.settings = settings
        self.clock = settings.reactor
        self.handler = handler
        self.links = set()
        self.readyLinks = []
        self.counters = dict.fromkeys(
            ("violations", "formatErrors", "late", "timedOut", "links"), 0
        )
        self.observers = []
        self._readyWaiters = []
        #: Handler calls under way on every link of this factory.
        self.handling = 0
        self.limits = LimitLog(self.clock)

    def countersFor(self, link):
        """
        The counters C{link} keeps (see L{LINK_COUNTERS}).
        """
        return dict.fromkeys(LINK_COUNTERS, 0)

    def roundTripsFor(self, link):
        """
        Where C{link} records the round trips of its requests.
        """
        return RoundTrips()

    def linkEvent(self, event, link):
        """
        Tell the observers (callables taking C{event, link, factory}) that
        C{link} changed state: C{"up"}, C{"ready"}, C{"lost"}, and on the
        platform C{"degraded"}, C{"ejected"}, C{"recovering"},
        C{"drained"}.
        """
        for observer in self.observers:
            observer(event, link, self)

    def requestsAnswered(self, link, rtts):
        """
        Requests sent on C{link} got their answers, after C{rtts} seconds
        each (a list: the answers that came in one read).
        """

    def whenReady(self):
        """
        A L{Deferred} that fires with a ready link as soon as there is one.
        """
        if self.readyLinks:
            return succeedWith(self.readyLinks[0])
        d = Deferred(lambda d: self._readyWaiters.remove(d))
        self._readyWaiters.append(d)
        return d

    def linkUp(self, link):
        self.links.add(link)
        self.counters["links"] += 1
        self.linkEvent("up", link)

    def linkReady(self, link):
        if link not in self.readyLinks:
            self.readyLinks.append(link)
        self.linkEvent("ready", link)
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(link)

    def linkNotReady(self, link):
        if link in self.readyLinks:
            self.readyLinks.remove(link)
            self.linkEvent("not-ready", link)

    def linkProven(self, link):
        """
        The peer sent its first valid frame on C{link}.
        """

    def linkLost(self, link, why):
        self.links.discard(link)
        self.linkNotReady(link)
        self.linkEvent("lost", link)

    def signOnReceived(self, link, message):
        """
        The peer asks to sign on; return the response code.
        """
        return wire.INVALID_TRANSACTION

    def signOffReceived(self, link):
        """
        The peer signed off C{link}: it takes no more requests.
        """

    def lateResponse(self, link, key, message):
        """
        An answer matched nothing pending: it came after its request timed
        out, or it is unknown. Logged with its key; never raised.
        """
        self.counters["late"] += 1
        self.log.warn(
            "late or unmatched response {mti} {key} resp {resp} on {peer}",
            link_event="late-response",
            mti=message.get("mti"),
            key=wire.keyText(key),
            resp=message.get("resp"),
            peer=link.peer,
        )

    def requestTimedOut(self, link, key):
        self.counters["timedOut"] += 1
        self.log.warn(
            "request {key} on {peer} timed out", link_event="timeout", key=wire.keyText(key), peer=link.peer
        )

    def violationReceived(self, link, reason):
        self.counters["violations"] += 1

    def formatErrorReceived(self, link, reason):
        self.counters["formatErrors"] += 1

    def closeAll(self):
        """
        Close every link; return a L{Deferred} that fires when all are gone.
        """
        self.limits.stop()
        waits = []
        for link in list(self.links):
            waits.append(link.whenLost())
            link.close("service stopping")
        return gatherResults(waits)
