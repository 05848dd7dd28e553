"""
The payment side (智能电视支付及账户管理系统): the server that listens,
accepts every platform link at once, and forgets a broken one while it
keeps listening; and L{LedgerPaymentService}, the same answering from a
ledger it owns, as C{--ledger} chooses (L{parseLedgerSpec}).
"""

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from tvlink.errors import LinkNotReady
from tvlink.link import wire
from tvlink.link.factory import LinkFactory
from tvlink.link.interfaces import IMessageHandler
from tvlink.link.limits import ConnectionCaps
from tvlink.link.service import LinkService, failNow
from tvlink.link.settings import PAYMENT, atLeast, positive, succeedWith
from tvlink.payment.backend import DEFAULT_BACKEND_TIMEOUT, LedgerHandler


class PaymentFactory(LinkFactory, ServerFactory):
    """
    Builds a link for every platform connection. A platform signs on with
    C{0800}/C{001}; its link is ready once answered C{00}.
    """

    role = PAYMENT
    noisy = False
    requireSignOn = True
    log = Logger()

    def __init__(self, settings, handler, max_links=1000, max_links_per_peer=100, sign_on_timeout=30.0):
        self.setUp(settings, handler)
        self.sign_on_timeout = positive("sign_on_timeout", sign_on_timeout)
        self.max_links = atLeast("max_links", max_links, 1)
        self.max_links_per_peer = atLeast("max_links_per_peer", max_links_per_peer, 1)
        self.caps = ConnectionCaps(self.max_links, self.max_links_per_peer, ("max-links", "max-links-per-peer"))

    @property
    def openConnections(self):
        return self.caps.open

    @property
    def perPeer(self):
        """
        Connections open, by peer host.
        """
        return self.caps.byHost

    def buildProtocol(self, addr):
        """
        A link for a new connection, or C{None} (the connection is closed
        at once) when C{max_links} or C{max_links_per_peer} is reached.
        """
        host = getattr(addr, "host", None)
        refused = self.caps.admit(host)
        if refused is not None:
            self.limits.hit(refused, "%s:%s" % (host, getattr(addr, "port", "")), "a connection")
            return None
        link = ServerFactory.buildProtocol(self, addr)
        link.peerHost = host
        return link

    def signOnReceived(self, link, message):
        self.log.info(
            "platform {sender} signed on over {peer}",
            link_event="sign-on",
            sender=message["sender"],
            peer=link.peer,
        )
        link.platform = message["sender"]
        return wire.APPROVED

    def linkUp(self, link):
        LinkFactory.linkUp(self, link)
        link.signOnDeadline = self.clock.callLater(self.sign_on_timeout, self._signOnDue, link)

    def _signOnDue(self, link):
        if link.state == "up" and not link.signedOff:
            self.log.warn(
                "link {peer} did not sign on within {seconds:g}s; closing it",
                link_event="no-sign-on",
                peer=link.peer,
                seconds=self.sign_on_timeout,
            )
            link.close("no sign-on within %gs" % (self.sign_on_timeout,))

    def linkLost(self, link, why):
        deadline = getattr(link, "signOnDeadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        LinkFactory.linkLost(self, link, why)
        host = getattr(link, "peerHost", None)
        if host is not None:
            self.caps.release(host)


def _digits(value, length=None):
    return (
        isinstance(value, str)
        and value.isascii()
        and value.isdigit()
        and (length is None or len(value) == length)
    )


@implementer(IMessageHandler)
class DemoHandler:
    """
    An in-memory stand-in for an account system: purchases are approved
    while a card's total stays within C{limit} fen. Idempotent by key: a
    repeated request gets its first answer again. Nothing survives a
    restart; the SQLite ledger replaces it for real use.
    """

    log = Logger(namespace="tvlink.payment")

    def __init__(self, limit=100000):
        self.limit = limit
        self.spent = {}
        self.answers = {}
        self.applied = {}

    #: Answers remembered for repeats (oldest forgotten first).
    remember = 100000

    def handle(self, message):
        key = wire.messageKey(message)
        answers = self.answers
        if key in answers:
            return answers[key]
        answer = self._decide(message, key)
        answers[key] = answer
        if len(answers) > self.remember:
            del answers[next(iter(answers))]
            if len(self.applied) > self.remember:
                del self.applied[next(iter(self.applied))]
        return answer

    def _decide(self, message, key):
        mti = message["mti"]
        proc = message.get("proc")
        if mti == "0820":
            return {"resp": wire.APPROVED}
        if mti == "0420":
            orig = message.get("orig")
            if not isinstance(orig, dict):
                return {"resp": wire.FORMAT_ERROR}
            applied = self.applied.pop(wire.messageKey(orig), None)
            if applied is not None:
                pan, amount = applied
                self.spent[pan] -= amount
            return {"resp": wire.APPROVED}
        if mti not in ("0200", "0220"):
            return {"resp": wire.INVALID_TRANSACTION}
        pan = message.get("pan")
        if not _digits(pan) or not 12 <= len(pan) <= 19:
            return {"resp": wire.INVALID_CARD}
        spent = self.spent.get(pan, 0)
        if mti == "0200" and proc == "300000":
            return {"resp": wire.APPROVED, "balance": "%012d" % (self.limit - spent,)}
        amount = message.get("amount")
        if not _digits(amount, 12) or int(amount) == 0:
            return {"resp": wire.INVALID_AMOUNT}
        amount = int(amount)
        if mti == "0220" and proc == "200000":
            amount = -min(amount, spent)
        elif proc != "000000":
            return {"resp": wire.INVALID_TRANSACTION}
        elif spent + amount > self.limit:
            return {"resp": wire.INSUFFICIENT_FUNDS}
        self.spent[pan] = spent + amount
        self.applied[key] = (pan, amount)
        return {"resp": wire.APPROVED}


class PaymentService(LinkService):
    """
    An L{IService} listening for platform links on a Twisted server
    endpoint string (C{"tcp:7000:interface=127.0.0.1"}).

    @param listen: the endpoint description.
    @param handler: an L{IMessageHandler}; by default a L{DemoHandler}.
    @param options: as for L{tvlink.PlatformService}.
    """

    role = PAYMENT
    defaultSender = "PAYMENT"
    log = Logger(namespace="tvlink.payment")
    #: The file service beside it (L{tvlink.files.service.FileService}),
    #: if the role has one: its figures are in the role's metrics.
    files = None

    def __init__(
        self,
        listen,
        handler=None,
        tls_cert=None,
        tls_key=None,
        tls_ca=None,
        tls_handshake_timeout=10.0,
        max_links=1000,
        max_links_per_peer=100,
        sign_on_timeout=30.0,
        **options
    ):
        LinkService.__init__(
            self, handler=handler if handler is not None else DemoHandler(), **options
        )
        self.listen = listen
        self.endpoint = serverFromString(self.reactor, listen)
        self.factory = PaymentFactory(
            self.settings, self.handler, max_links, max_links_per_peer, sign_on_timeout
        )
        self.factories.append(self.factory)
        #: TLS (L{tvlink.link.tls.ServerTLS}; mutual with C{tls_ca}), or C{None}.
        self.tls = None
        if any(o is not None for o in (tls_cert, tls_key, tls_ca)):
            from tvlink.link.tls import ServerTLS

            if listen.lstrip().lower().startswith("ssl:"):
                raise ValueError(
                    "listen on a plain endpoint (tcp:...) with the tls_* options, not %r" % (listen,)
                )
            self.tls = ServerTLS(tls_cert, tls_key, tls_ca, tls_handshake_timeout)
            self.endpoint = self.tls.wrapEndpoint(self.endpoint)
            self.tls.configure(self.factory)
        self.port = None
        self._listenWaiters = []
        self._listenCalled = False

    def privilegedStartService(self):
        LinkService.privilegedStartService(self)
        self._listenCalled = True
        failures = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            # Raised here, before the reactor runs, so twistd exits
            # non-zero with the reason instead of running without a port.
            failures[0].raiseException()

    def _listening(self, port):
        self.port = port
        self.log.info(
            "payment listening on {address}", link_event="listening", address=self.address()
        )
        waiters, self._listenWaiters = self._listenWaiters, []
        for d in waiters:
            d.callback(port)

    def startService(self):
        if not self._listenCalled:
            self.privilegedStartService()
        LinkService.startService(self)

    def address(self):
        """
        C{"host:port"} actually listened on, or C{None} before listening.
        """
        if self.port is None:
            return None
        host = self.port.getHost()
        return "%s:%d" % (host.host, host.port)

    def whenListening(self):
        """
        A L{Deferred} firing with the listening port.
        """
        if self.port is not None:
            return succeedWith(self.port)
        d = Deferred()
        self._listenWaiters.append(d)
        return d

    def stopService(self):
        port, self.port = self.port, None
        self._listenCalled = False
        stopping = port.stopListening() if port is not None else None
        d = LinkService.stopService(self)
        if stopping is not None:
            d.addCallback(lambda _: stopping)
        return d.addCallback(lambda _: None)

    def request(self, link, message, timeout=None):
        """
        Send request C{message} (e.g. a C{0820} notification) to the
        platform on C{link}, one of L{readyLinks}.

        @return: a L{Deferred} firing with the answer C{dict}.
        """
        if link not in self.factory.links:
            return failNow(LinkNotReady("that link is not connected"))
        try:
            return link.request(message, timeout)
        except Exception as e:
            return failNow(e)

    def whenReady(self):
        """
        A L{Deferred} firing with a ready link once a platform has signed on.
        """
        return self.factory.whenReady()


def parseLedgerSpec(spec):
    """
    Parse a C{--ledger} value: C{"memory"}, C{"sqlite:PATH"} or
    C{"postgresql://USER@HOST:PORT/DB"}.

    @return: C{("memory", None)}, C{("sqlite", PATH)} or C{("postgresql",
        URL)}.
    @raise ValueError: for anything else.
    """
    from tvlink.store.postgresql import checkURL, isURL

    if spec == "memory":
        return ("memory", None)
    if isURL(spec):
        return ("postgresql", checkURL(spec))
    if isinstance(spec, str) and spec.startswith("sqlite:"):
        path = spec[len("sqlite:"):]
        if path:
            return ("sqlite", path)
        raise ValueError("sqlite: needs a path, e.g. sqlite:tvlink-ledger.db")
    raise ValueError("expected sqlite:PATH, postgresql://USER@HOST:PORT/DB or memory, not %r" % (spec,))


class LedgerPaymentService(PaymentService):
    """
    A L{PaymentService} answering from a ledger it owns (a
    L{tvlink.payment.ledger.PaymentLedger}): the ledger is opened before
    the port listens (so a bad ledger stops C{twistd} at once) and closed
    once every link has closed.

    @param ledger: the L{tvlink.payment.ledger.PaymentLedger}.
    @param backend: an L{tvlink.payment.backend.IAccountBackend} to forward
        to instead of the ledger.
    @param backend_timeout: the back end's budget in seconds.
    """

    def __init__(self, listen, ledger, backend=None, backend_timeout=DEFAULT_BACKEND_TIMEOUT, **options):
        handler = LedgerHandler(ledger, backend, backend_timeout, reactor=options.get("reactor"))
        PaymentService.__init__(self, listen, handler=handler, **options)
        self.ledger = ledger

    def privilegedStartService(self):
        self.ledger.open()
        PaymentService.privilegedStartService(self)

    def stopService(self):
        d = PaymentService.stopService(self)
        d.addCallback(lambda _: self.ledger.close())
        return d
