"""
The platform side (智能电视集成播控平台): the service that keeps links to
one or more payment endpoints (one L{tvlink.platform.factory.PlatformFactory}
per link slot) and spreads requests over them.
"""

import random

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from zope.interface import implementer

from tvlink.errors import DuplicateKey, LinkBusy, NoLinkAvailable
from tvlink.link import wire
from tvlink.link.interfaces import IMessageHandler
from tvlink.link.service import LinkService, failNow
from tvlink.link.settings import PLATFORM, succeedWith
from tvlink.platform.breaker import CircuitBreaker
from tvlink.platform.draining import Draining
from tvlink.platform.endpoints import parseGroups
from tvlink.platform.factory import PlatformFactory
from tvlink.platform.files import PlatformFiles
from tvlink.platform.journal import PlatformJournal, isMoneyMoving
from tvlink.platform.pool import RequestQueue, getBalancer
from tvlink.platform.settlement import Settlement


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


class PlatformService(PlatformFiles, Draining, LinkService):
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
    @param journal: C{"sqlite:PATH"}, C{"postgresql://USER@HOST:PORT/DB"}
        (a journal several platform processes share) or a
        L{PlatformJournal}: journal money-moving requests and reverse those
        left in doubt (see L{tvlink.platform.settlement}).
    @param journal_owner: the name this process holds its journal entries
        under (L{PlatformJournal}'s C{owner}).
    @param journal_lease: seconds its entries stay its own without its
        renewing the lease (L{PlatformJournal}'s C{lease}).
    @param vault: a L{tvlink.platform.cardvault.CardVault}: the journal
        keeps each card number sealed under it as well as masked, and the
        C{0420} reversals it drives carry the card (ISO 8583 field 2).
        Used by the journal the service opens, and given to a
        L{PlatformJournal} passed in that has no vault of its own. Default
        C{None}: masked card numbers only, reversals without the card.
    @param terminal_deadline: the TV terminal's own deadline; C{timeout}
        must be below it (the per-hop timeout ladder).
    @param endpoint_codecs: C{{"HOST:PORT": codec}} for endpoints whose
        codec differs from the service's C{codec}.
    @param files_endpoint: C{"HOST:PORT"} of the payment node's file
        service, for L{listFiles}, L{fetchFile} and L{sendFile}.
    @param options: C{heartbeat}, C{idle_timeout}, C{timeout},
        C{header}, C{max_frame}, C{frame_timeout}, C{sender},
        C{echo_interval}, C{reactor} (see L{tvlink.link.settings.LinkSettings}).
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
        vault=None,
        journal_owner=None,
        journal_lease=None,
        terminal_deadline=60.0,
        endpoint_codecs=None,
        files_endpoint=None,
        **options
    ):
        self.groups = parseGroups(endpoints)
        self.filesEndpoint = files_endpoint
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
        self._journalLease = (journal_owner, journal_lease)
        self.vault = vault
        self.journal = journal if isinstance(journal, PlatformJournal) else None
        #: The L{Settlement} of money-moving requests while the service
        #: keeps a journal (from its first start), else C{None}.
        self.settlement = None
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

    def privilegedStartService(self):
        # Opened before anything listens or connects, so that a journal
        # that cannot be opened (a database that is not there) stops
        # twistd at once.
        self._openJournal()
        LinkService.privilegedStartService(self)

    def _openJournal(self):
        if self._journalOption is not None and self.journal is None:
            owner, lease = self._journalLease
            self.journal = PlatformJournal(
                self._journalOption, reactor=self.reactor, vault=self.vault, owner=owner, lease=lease
            )

    def startService(self):
        LinkService.startService(self)
        self.stopping = False
        if self._journalOption is not None:
            self._openJournal()
            if self.journal.vault is None:
                self.journal.vault = self.vault
            if self.journal.vault is None:
                self.log.warn(
                    "no card key (--card-key): the journal keeps masked card numbers only, and "
                    "reversals will not carry the card",
                    journal_event="no-card-key",
                )
            self.settlement = Settlement(self.journal, self.settings, self._dispatch, self.reactor)
            self.settlement.start()
        for factory in self.factories:
            self._connect(factory)

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

    def request(self, message, timeout=None, terminal=None, newOrder=False):
        """
        Send request C{message} (a C{dict}) to a payment node; its journal
        entry, if it has one, notes the C{terminal} it was made for. With
        C{newOrder}, a purchase is journalled and sent only if no purchase
        already sent decides its order (else it fails with
        L{tvlink.errors.OrderDecided}).

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
        if self.settlement is not None and isMoneyMoving(message):
            return self.settlement.request(
                message, key, timeout, stan, budget=self.minimumBudget, terminal=terminal, newOrder=newOrder
            )
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
            self._unqueued, self._queueFailed, callbackArgs=(message, stan, flight), errbackArgs=(stan,)
        )

    #: A request that waited for a link, or for its journal entry, until
    #: less than this is left of its timeout is not sent: it could only
    #: time out (and, for money, cost a reversal).
    minimumBudget = 0.05

    def _unqueued(self, remaining, message, stan, flight):
        if remaining < self.minimumBudget:
            self._releaseStan(stan)
            raise NoLinkAvailable("no payment link available in time")
        return self._dispatch(message, remaining, stan, flight, True)

    def _queueFailed(self, failure, stan):
        self._releaseStan(stan)
        return failure

    def _lateResponse(self, key, message):
        if self.journal is not None and self.settlement is not None:
            self.settlement.lateResponse(key, message)

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

    # -- stopping -------------------------------------------------------

    def stopService(self):
        """
        Drain every endpoint, fail whatever still waits for a link, and
        close. Fires once nothing is left pending. Unfinished reversals
        stay in the journal and resume at the next start.
        """
        self.stopping = True
        if self.settlement is not None:
            self.settlement.stop()
        self.queue.failAll(NoLinkAvailable("the platform service is stopping"))
        drains = [self._drainSlot(f) for f in self.factories]
        d = DeferredList(drains)
        d.addCallback(lambda _: LinkService.stopService(self))
        if self.journal is not None and not isinstance(self._journalOption, PlatformJournal):
            # Closed only once the drain is over: answers that arrive during
            # it are still journalled.
            d.addCallback(self._closeJournal)
        return d

    @property
    def reversals(self):
        """
        The settlement's L{tvlink.platform.reversals.Reversals}, or C{None}
        without a journal.
        """
        return self.settlement.reversals if self.settlement is not None else None

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
