"""
The platform side (智能电视集成播控平台): the client that opens one
persistent link per payment endpoint and keeps it open.
"""

import random
import sqlite3

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tvlink.errors import (
    DuplicateKey,
    InDoubt,
    InDoubtAnswer,
    InDoubtLinkLost,
    InDoubtTimeout,
    LinkBusy,
    LinkLost,
    NoLinkAvailable,
    RequestError,
    RequestTimeout,
)
from tvlink.link import wire
from tvlink.link.factory import LINK_COUNTERS, LinkFactory
from tvlink.link.interfaces import IMessageHandler
from tvlink.link.roundtrips import RoundTrips
from tvlink.link.service import LinkService, failNow
from tvlink.link.settings import PLATFORM, succeedWith
from tvlink.platform.journal import (
    APPROVED,
    DECLINED,
    PENDING,
    REVERSAL_DONE,
    PlatformJournal,
    Reversals,
    isMoneyMoving,
)
from tvlink.platform.pool import CircuitBreaker, RequestQueue, getBalancer


def parseGroups(endpoints):
    """
    Parse endpoint configuration into priority groups: a list of
    C{"HOST:PORT"} strings, each of which may name several endpoints
    separated by commas (one group). Returns a list of groups, each a list
    of C{(host, port)}.
    """
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    groups = []
    for entry in endpoints:
        members = entry if isinstance(entry, (list, tuple)) else entry.split(",")
        group = [parseEndpoint(m.strip() if isinstance(m, str) else m) for m in members if m]
        if group:
            groups.append(group)
    if not groups:
        raise ValueError("at least one payment endpoint is needed")
    return groups


def parseEndpoint(text):
    """
    Parse C{"HOST:PORT"} into C{(host, port)}.

    @raise ValueError: naming what is wrong.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("endpoint %r is not HOST:PORT" % (text,))
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise ValueError("endpoint %r has no host" % (text,))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("endpoint %r has no valid port (1-65535)" % (text,))
    return host, int(port)


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

        def reconnect():
            self._callID = None
            connector.connect()

        self._callID = self.clock.callLater(self.delay, reconnect)

    def linkUp(self, link):
        self.link = link
        link.group = self.group
        LinkFactory.linkUp(self, link)
        d = link.request({"mti": "0800", "nmi": wire.SIGN_ON})
        d.addCallbacks(self._signOnAnswered, self._signOnFailed, (link,), None, (link,))

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
        d.addCallbacks(self._probed, self._probeFailed, (link,), None, (link,))

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


@implementer(IMessageHandler)
class PlatformHandler:
    """
    The platform's default handler for requests from the payment side:
    C{0820} notifications are logged and acknowledged, anything else is
    answered C{12}.
    """

    log = Logger(namespace="tvlink.platform")

    def handle(self, message):
        if message["mti"] == "0820":
            self.log.info(
                "notification {key} from {sender}",
                key="/".join((message["sender"], message["stan"], message.get("time", ""))),
                sender=message["sender"],
            )
            return {"resp": wire.APPROVED}
        return {"resp": wire.INVALID_TRANSACTION}


#: Answers to a purchase or refund that do not say whether money moved.
UNCERTAIN_ANSWERS = frozenset((wire.DESTINATION_UNAVAILABLE, wire.SYSTEM_MALFUNCTION))


class _Unsent(Exception):
    """
    Carries an error raised before a request was sent past the
    in-doubt handling.
    """

    def __init__(self, error):
        self.error = error


class PlatformService(LinkService):
    """
    An L{IService} holding links to one or more payment endpoints and
    spreading requests over them.

    @param endpoints: C{"HOST:PORT"} strings, one per payment node; a
        string may list several endpoints separated by commas, which makes
        them one priority group for the C{primary} strategy.
    @param links_per_endpoint: links opened to each endpoint.
    @param balance: C{"least-pending"} (default), C{"round-robin"},
        C{"primary"}, or an L{tvlink.platform.pool.IBalancer} provider.
    @param max_queued: requests that may wait for a ready link at once.
    @param eject_after: timeouts in a row that eject a link.
    @param cooldown: seconds an ejected link rests before its probe.
    @param ramp: seconds over which a recovered link regains full traffic.
    @param journal: C{"sqlite:PATH"} or a L{PlatformJournal}: journal
        money-moving requests and reverse those left in doubt.
    @param terminal_deadline: the TV terminal's own deadline; C{timeout}
        must be below it (the per-hop timeout ladder).
    @param endpoint_codecs: C{{"HOST:PORT": codec}} for endpoints whose
        codec differs from the service's C{codec}.
    @param options: C{heartbeat}, C{idle_timeout}, C{timeout},
        C{header}, C{max_frame}, C{frame_timeout}, C{sender},
        C{echo_interval}, C{reactor} (see L{tvlink.link.protocol.LinkSettings}).
    """

    role = PLATFORM
    defaultSender = "PLATFORM"
    log = Logger(namespace="tvlink.platform")

    def __init__(
        self,
        endpoints,
        handler=None,
        connect_timeout=10.0,
        links_per_endpoint=1,
        balance="least-pending",
        max_queued=1000,
        eject_after=5,
        cooldown=30.0,
        ramp=30.0,
        random=random.random,
        tls_cert=None,
        tls_key=None,
        tls_ca=None,
        tls_hostname=None,
        tls_handshake_timeout=10.0,
        journal=None,
        terminal_deadline=60.0,
        endpoint_codecs=None,
        **options
    ):
        self.groups = parseGroups(endpoints)
        self.endpoints = [e for group in self.groups for e in group]
        LinkService.__init__(
            self, handler=handler if handler is not None else PlatformHandler(), **options
        )
        if int(links_per_endpoint) < 1:
            raise ValueError("links_per_endpoint must be at least 1")
        if int(max_queued) < 0:
            raise ValueError("max_queued must not be negative")
        if int(eject_after) < 1:
            raise ValueError("eject_after must be at least 1")
        self.terminal_deadline = float(terminal_deadline)
        if not self.settings.timeout < self.terminal_deadline:
            raise ValueError(
                "timeout (%gs) must be below the terminal deadline (%gs): each hop waits less "
                "than the one before it" % (self.settings.timeout, self.terminal_deadline)
            )
        self.connect_timeout = float(connect_timeout)
        self.balancer = getBalancer(balance)
        self._healthy = None
        self._journalOption = journal
        self.journal = journal if isinstance(journal, PlatformJournal) else None
        self.reversals = None
        self.queue = RequestQueue(self.reactor, int(max_queued))
        self.stopping = False
        for group, members in enumerate(self.groups):
            for host, port in members:
                for slot in range(int(links_per_endpoint)):
                    factory = PlatformFactory(
                        "%s:%d" % (host, port),
                        self.settings,
                        self.handler,
                        random=random,
                        group=group,
                        slot=slot,
                        breaker=CircuitBreaker(
                            self.reactor, int(eject_after), float(cooldown), float(ramp), random
                        ),
                    )
                    factory.host, factory.port = host, port
                    codec = (endpoint_codecs or {}).get(factory.endpoint)
                    if codec is not None:
                        # This endpoint's own codec (--endpoint-codec).
                        factory.codec = self.settings.codecFor(codec)
                    factory.observers.append(self._linkEvent)
                    factory.onLate = self._lateResponse
                    factory.capacityFreed = self._capacityFreed
                    self.factories.append(factory)
        #: The links' TLS (L{tvlink.link.tls.ClientTLS}), or C{None} for plain TCP.
        self.tls = None
        if any(o is not None for o in (tls_cert, tls_key, tls_ca, tls_hostname)):
            from tvlink.link.tls import ClientTLS

            self.tls = ClientTLS(tls_cert, tls_key, tls_ca, tls_hostname, tls_handshake_timeout)
            for factory in self.factories:
                self.tls.configure(factory, factory.host)

    def startService(self):
        LinkService.startService(self)
        self.stopping = False
        if self._journalOption is not None:
            if self.journal is None:
                self.journal = PlatformJournal(self._journalOption, reactor=self.reactor)
            self.reversals = Reversals(
                self.journal,
                self._dispatch,
                self.reactor,
                self.settings.timeout,
                onFinal=self._reversed,
                newKey=self._rekeyReversal,
            )
            self.reversals.running = True
            self.journal.unfinished().addCallback(self._resumeReversals)
        for factory in self.factories:
            self._connect(factory)

    def _resumeReversals(self, entries):
        """
        After a restart: whatever was journalled but not settled is in
        doubt (it may have been sent); reverse it.
        """
        for entry in entries:
            if entry["sender"] == self.settings.sender and entry["reversal_stan"]:
                self.settings.stans.reserve(entry["reversal_stan"])
            if entry["state"] == PENDING or not entry["reversal_stan"]:
                self._markInDoubt(entry["key"], "unfinished at restart")
            else:
                self.reversals.begin(entry)
        if entries:
            self.log.info(
                "resuming {count} unfinished transactions from the journal",
                link_event="journal-resume",
                count=len(entries),
            )
    def _connect(self, factory):
        factory.continueTrying = True
        factory.draining = False
        self._healthy = None
        if self.tls is not None:
            # connectSSL, not an endpoint: the connector it returns is what
            # lets the ReconnectingClientFactory reconnect, over TLS again.
            self.reactor.connectSSL(
                factory.host, factory.port, factory, factory.tlsCreator, timeout=self.connect_timeout
            )
        else:
            self.reactor.connectTCP(factory.host, factory.port, factory, timeout=self.connect_timeout)

    def _linkEvent(self, event, link, factory):
        self._healthy = None
        if event in ("ready", "recovering") and len(self.queue):
            self._releaseQueue()

    # -- choosing a link ------------------------------------------------

    def candidates(self):
        """
        The ready links that may take a request now. A link ramping back
        after ejection is left out of a share of requests, unless no other
        link can take them.
        """
        healthy = self._healthy
        if healthy is not None:
            return healthy
        out = []
        recovering = []
        steady = True
        for factory in self.factories:
            link = factory.link
            if link is None or link.state != "ready" or factory.draining:
                continue
            breaker = factory.breaker
            if breaker.state != "closed":
                steady = False
            if breaker.admits():
                out.append(link)
            elif breaker.state == "recovering":
                recovering.append(link)
        out = out or recovering
        if steady:
            # Nothing depends on the clock: keep the list until a link
            # changes state.
            self._healthy = out
        return out

    def pickLink(self):
        """
        The link for the next request, or C{None} if none may take it.
        """
        candidates = self.candidates()
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        return self.balancer.choose(candidates)

    def _inFlightAnywhere(self, key):
        for factory in self.factories:
            link = factory.link
            if link is not None and key in link.pending:
                return True
        return False

    def request(self, message, timeout=None):
        """
        Send request C{message} (a C{dict}) to a payment node.

        C{sender}, C{stan} and C{time} are filled in when missing. If no
        link is ready the request waits for one, up to its C{timeout}, in a
        queue of at most C{max_queued}. A purchase or refund is journalled
        first when the service keeps a journal.

        @return: a L{Deferred} firing with the answer C{dict}, or failing
            with L{tvlink.errors.RequestTimeout}, L{tvlink.errors.LinkLost},
            L{tvlink.errors.NoLinkAvailable} or
            L{tvlink.errors.DuplicateKey}; for a journalled request whose
            outcome is unknown, with L{tvlink.errors.InDoubt}.
        """
        settings = self.settings
        if timeout is None:
            timeout = settings.timeout
        try:
            message, stan = settings.stamp(message)
        except Exception as e:
            return failNow(e)
        key = (message["sender"], message["stan"], message["time"])
        if stan is None and self._inFlightAnywhere(key):
            # A caller-chosen key already on a link, whichever.
            return failNow(DuplicateKey("request %s is already in flight" % ("/".join(key),)))
        if self.reversals is not None and isMoneyMoving(message):
            return self._journalled(message, key, timeout, stan)
        return self._dispatch(message, timeout, stan, None, False, key)

    def _releaseStan(self, stan):
        if stan is not None:
            self.settings.stans.release(stan)

    def _dispatch(self, message, timeout, stan=None, flight=None, queued=False, key=None):
        """
        Send C{message} on a link the balancer picks, or wait for one.
        C{stan}, if given, is released when the request ends; C{flight}, if
        given, is a one-item list set to C{True} once the request is
        written. Requests wait in turn: while any waits, a new one waits
        behind it (C{queued} marks one the queue has just let go). C{key}
        is the message's key, if the caller has it to hand.
        """
        if self.stopping:
            self._releaseStan(stan)
            return failNow(NoLinkAvailable("the platform service is stopping"))
        link = self.pickLink()
        if link is not None and not (self.queue.waiting and not queued):
            if key is None:
                key = (message["sender"], message["stan"], message["time"])
            try:
                d = link.sendRequest(message, key, timeout, stan)
            except LinkBusy:
                # Full: wait for room on it or on another link.
                pass
            except Exception as e:
                self._releaseStan(stan)
                return failNow(e)
            else:
                if flight is not None:
                    flight[0] = True
                return d
        # No link, the one chosen is full, or others are waiting: wait for a
        # ready link or for room on one.
        try:
            waiting = self.queue.wait(timeout)
        except NoLinkAvailable as e:
            self._releaseStan(stan)
            return failNow(e)
        return waiting.addCallbacks(
            self._unqueued, self._queueFailed, (message, stan, flight), None, (stan,)
        )

    #: A request that waited for a link until less than this is left of
    #: its timeout is not sent: it could only time out (and, for money,
    #: cost a reversal).
    minimumBudget = 0.05

    def _unqueued(self, remaining, message, stan, flight):
        if remaining < self.minimumBudget:
            self._releaseStan(stan)
            raise NoLinkAvailable("no payment link available in time")
        return self._dispatch(message, remaining, stan, flight, True)

    def _queueFailed(self, failure, stan):
        self._releaseStan(stan)
        return failure

    # -- money-moving requests ------------------------------------------

    def _journalled(self, message, key, timeout, stan):
        started = self.reactor.seconds()
        flight = [False]
        d = self.journal.record(message)
        d.addCallbacks(
            self._recorded, self._notRecorded, (message, timeout, started, stan, flight), None, (key, stan)
        )
        d.addCallbacks(self._settled, self._unsettled, (key,), None, (key, flight))
        return d

    def _recorded(self, _, message, timeout, started, stan, flight):
        left = timeout - (self.reactor.seconds() - started)
        if left < self.minimumBudget:
            # The journal write took the budget: sending now could only
            # time out and cost a reversal.
            self._releaseStan(stan)
            raise NoLinkAvailable("no time left to send after journalling")
        return self._dispatch(message, left, stan, flight)

    def _notRecorded(self, failure, key, stan):
        self._releaseStan(stan)
        if failure.check(sqlite3.IntegrityError):
            raise _Unsent(DuplicateKey("transaction %s is already journalled" % ("/".join(key),)))
        return failure

    def _settled(self, answer, key):
        resp = answer.get("resp")
        if resp in UNCERTAIN_ANSWERS:
            # 91 or 96: the payment node could not finish, but its account
            # back end may have applied the request all the same (a
            # back-end timeout). Reversing what was never applied is
            # harmless; leaving applied money unreversed is not.
            error = InDoubtAnswer(
                "transaction %s was answered %s by the payment node; its outcome at the "
                "account back end is unknown, so it is in doubt and is being reversed"
                % ("/".join(key), resp)
            )
            error.key = key
            error.answer = answer
            d = self._markInDoubt(key, "answered %s" % (resp,))
            return d.addCallback(lambda _: Failure(error))
        state = APPROVED if resp == wire.APPROVED else DECLINED
        d = self.journal.settle(key, state, resp)
        return d.addCallback(lambda _: answer)

    def _unsettled(self, failure, key, flight):
        if failure.check(_Unsent):
            return Failure(failure.value.error)
        if not flight[0]:
            # Never written to a link: nothing can have moved.
            d = self.journal.settle(key, DECLINED, wire.DESTINATION_UNAVAILABLE, failure.getErrorMessage())
            return d.addCallback(lambda _: failure)
        # Written, and no answer: timed out, link lost, or cancelled by the
        # caller. The payment side may have applied it.
        if failure.check(RequestTimeout):
            error = InDoubtTimeout(key, failure.value.timeout)
        elif failure.check(LinkLost):
            error = InDoubtLinkLost(key, failure.getErrorMessage())
        else:
            error = InDoubt(
                "request %s ended without an answer (%s) after it was sent; the transaction "
                "is in doubt and is being reversed" % ("/".join(key), failure.getErrorMessage() or failure.type.__name__)
            )
            error.key = key
        d = self._markInDoubt(key, failure.getErrorMessage())
        return d.addCallback(lambda _: Failure(error))

    def _markInDoubt(self, key, reason):
        stan = self.settings.stans.allocate()
        when = self.settings.transmissionTime()
        self.log.warn(
            "transaction {key} is in doubt ({reason}); reversing",
            link_event="in-doubt",
            key="/".join(key),
            reason=reason,
        )
        d = self.journal.markInDoubt(key, reason, stan, when)
        d.addCallback(lambda _: self.journal.get(key))
        d.addCallback(self._beginReversal, stan)
        return d

    def _beginReversal(self, entry, allocated):
        if entry["reversal_stan"] != allocated:
            # Already in doubt before (a restart): keep its first reversal key.
            self.settings.stans.release(allocated)
        self.reversals.begin(entry)

    def _rekeyReversal(self, key, message):
        if message["sender"] == self.settings.sender:
            self.settings.stans.release(message["stan"])
        message = dict(message, stan=self.settings.stans.allocate(), time=self.settings.transmissionTime())
        self.journal.rekeyReversal(key, message["stan"], message["time"])
        return message

    def _reversed(self, key, state, message):
        if message["sender"] == self.settings.sender:
            self.settings.stans.release(message["stan"])

    def _lateResponse(self, key, message):
        if self.journal is None:
            return
        resp = message.get("resp")
        if message.get("mti") == "0430":
            d = self.journal.byReversalKey(key)
            d.addCallback(self._lateReversalAnswer, resp)
        else:
            d = self.journal.noteLate(key, resp)
        d.addErrback(lambda f: self.log.failure("recording a late answer failed", f))

    def _lateReversalAnswer(self, entry, resp):
        if entry is not None and entry["state"] not in (APPROVED, DECLINED) and resp in REVERSAL_DONE:
            if self.reversals is not None:
                return self.reversals.finished(entry["key"], resp)

    def outcome(self, key):
        """
        A L{Deferred} of the journal entry of the request with C{key}
        (sender, stan, time): its C{state} is C{pending}, C{in-doubt},
        C{approved}, C{declined} or C{reversed}; C{None} if unknown.
        """
        if self.journal is None:
            return failNow(RuntimeError("this platform service keeps no journal"))
        return self.journal.get(tuple(key))

    def _capacityFreed(self, count=1):
        if self.queue.waiting:
            self.queue.release(count)

    def _releaseQueue(self):
        self.queue.release()

    def whenReady(self):
        """
        A L{Deferred} that fires with a ready link once any link is ready.
        """
        ready = self.readyLinks()
        if ready:
            return succeedWith(ready[0])
        waiters = [f.whenReady() for f in self.factories]
        d = Deferred(lambda _: [w.cancel() for w in waiters if not w.called])
        for w in waiters:
            w.addCallbacks(self._firstReady, lambda f: None, (d, waiters))
        return d

    def _firstReady(self, link, d, waiters):
        if not d.called:
            for w in waiters:
                if not w.called:
                    w.cancel()
            d.callback(link)

    # -- draining and stopping ------------------------------------------

    def drain(self, endpoint):
        """
        Take C{endpoint} (C{"HOST:PORT"}) out of service: no new requests,
        in-flight ones finish (up to their timeout), then a sign-off and a
        close. Returns a L{Deferred} that fires when every link to it is
        closed.
        """
        factories = [f for f in self.factories if f.endpoint == endpoint]
        if not factories:
            return failNow(ValueError("no such endpoint %r" % (endpoint,)))
        return DeferredList([self._drainSlot(f) for f in factories]).addCallback(lambda _: None)

    def resume(self, endpoint):
        """
        Put a drained C{endpoint} back in service.
        """
        for f in self.factories:
            if f.endpoint == endpoint and f.draining:
                if f.link is None:
                    self._connect(f)
                else:
                    # Still draining: connect afresh once the old link is
                    # gone, so the slot never holds two.
                    f.resumeWhenDrained = True

    def _drainSlot(self, factory):
        factory.draining = True
        self._healthy = None
        factory.stopTrying()
        link = factory.link
        if link is None:
            self._drained(None, factory, None)
            return succeedWith(None)
        d = link.pending.whenEmpty()
        d.addCallback(self._signOff, link)
        d.addBoth(self._drained, factory, link)
        return d

    def _signOff(self, _, link):
        if link.state != "ready":
            return None
        d = link.request({"mti": "0800", "nmi": wire.SIGN_OFF}, timeout=min(5.0, self.settings.timeout))
        d.addErrback(lambda f: None)
        return d

    def _drained(self, result, factory, link):
        if link is not None and link.state not in ("closing", "lost"):
            closing = link.whenLost()
            link.close("drained")
        else:
            closing = succeedWith(None)
        self.log.info(
            "link to {endpoint} drained", link_event="drained", endpoint=factory.endpoint
        )
        factory.linkEvent("drained", link)
        return closing.addCallback(self._afterDrain, factory)

    def _afterDrain(self, _, factory):
        if factory.resumeWhenDrained and not self.stopping:
            factory.resumeWhenDrained = False
            # After the connector has seen the loss (it must not retry).
            self.reactor.callLater(0, self._connect, factory)

    def stopService(self):
        """
        Drain every endpoint, fail whatever still waits for a link, and
        close. Fires once nothing is left pending. Unfinished reversals
        stay in the journal and resume at the next start.
        """
        self.stopping = True
        if self.reversals is not None:
            self.reversals.stop()
        self.queue.failAll(NoLinkAvailable("the platform service is stopping"))
        drains = [self._drainSlot(f) for f in self.factories]
        d = DeferredList(drains)
        d.addCallback(lambda _: LinkService.stopService(self))
        if self.journal is not None and not isinstance(self._journalOption, PlatformJournal):
            # Closed only once the drain is over: answers that arrive during
            # it are still journalled.
            d.addCallback(self._closeJournal)
        return d

    def _closeJournal(self, _):
        journal, self.journal = self.journal, None
        if journal is not None:
            return journal.close()

    # -- what operators read ----------------------------------------------

    def status(self):
        """
        One entry per link slot: endpoint, group, state, in flight,
        counters, reconnects, round-trip p50/p99 (seconds), time since the
        last frame in and out.
        """
        now = self.reactor.seconds()
        result = []
        for f in self.factories:
            link = f.link
            rtts = f.slotRoundTrips
            entry = {
                "endpoint": f.endpoint,
                "group": f.group,
                "slot": f.slot,
                "state": f.stateName(),
                "peer": link.peer if link is not None else None,
                "inFlight": link.inFlight() if link is not None else 0,
                "reconnects": f.reconnects,
                "ejections": f.breaker.ejections,
                "rttP50": rtts.percentile(50),
                "rttP99": rtts.percentile(99),
                "sinceFrameIn": now - link.lastFrameIn if link is not None else None,
                "sinceFrameOut": now - link.lastFrameOut if link is not None else None,
                "violations": f.counters["violations"],
            }
            entry.update(f.slotCounters)
            result.append(entry)
        return result

    def observeLinks(self, observer):
        """
        Call C{observer(event, link, slot)} on every link-state event (up,
        ready, degraded, ejected, recovering, drained, lost).
        """
        for f in self.factories:
            f.observers.append(observer)

    def observeRoundTrips(self, observer):
        """
        Call C{observer(rtt, slot)} with the round trip in seconds of every
        answered request (for metrics; keep it cheap).
        """
        for f in self.factories:
            f.roundTripObservers.append(observer)
