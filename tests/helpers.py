"""
Test helpers shared by the link, platform and payment tests: frames,
recording handlers, one link or a linked platform/payment pair on a
Clock, with no sockets.
"""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.test import iosim
from zope.interface import implementer

from tvlink.link import wire
from tvlink.link.interfaces import IMessageHandler
from tvlink.link.settings import LinkSettings
from tvlink.payment.service import DemoHandler, PaymentFactory
from tvlink.testing.fakes import FakePlatform


class Pair(FakePlatform):
    """
    A platform link and a payment link joined by an iosim pump, sharing
    one Clock: a L{FakePlatform} whose payment side is a
    C{paymentFactoryClass} (by default a L{PaymentFactory} with a
    L{DemoHandler}), both sides with the same link options.
    """

    def __init__(
        self,
        clock=None,
        paymentHandler=None,
        platformHandler=None,
        paymentFactoryClass=PaymentFactory,
        **options
    ):
        clock = clock if clock is not None else Clock()
        paymentSender = options.pop("paymentSender", "PAYMENT")
        platformSender = options.pop("platformSender", "PLATFORM")
        self.paymentSettings = LinkSettings(reactor=clock, sender=paymentSender, **options)
        paymentFactory = paymentFactoryClass(
            self.paymentSettings, paymentHandler if paymentHandler is not None else DemoHandler()
        )
        FakePlatform.__init__(
            self, paymentFactory, clock, platformHandler, sender=platformSender, **options
        )
        self.platformSettings = self.settings
        self.platformFactory = self.factory
        self.platform = self.link
        self.payment = self.paymentLink
        self.platformTransport = self.transport


class PoolRig:
    """
    A started PlatformService on a MemoryReactorClock whose every link slot
    is joined by iosim to an in-memory payment factory for its endpoint.
    """

    def __init__(
        self, ports=(7001, 7002, 7003), handlers=None, journalPath=None, codec=None, journalOptions=None, **options
    ):
        from twisted.internet.testing import MemoryReactorClock

        from tvlink.platform.service import PlatformService

        self.reactor = MemoryReactorClock()
        options.setdefault("random", lambda: 0.5)
        payment = {}
        if codec is not None:
            # Both ends on one codec; the ISO 8583 ones carry the senders
            # in fields 32/33, so digits.
            payment["codec"] = options["codec"] = codec
            options.setdefault("sender", "10000001")
        self.payments = {}
        for i, port in enumerate(ports):
            handler = handlers[i] if handlers else DemoHandler(limit=10**12)
            sender = ("%d" if codec is not None else "PAY%d") % (port,)
            self.payments[port] = PaymentFactory(
                LinkSettings(reactor=self.reactor, sender=sender, **payment), handler
            )
        if journalPath is not None:
            from tvlink.platform.journal import PlatformJournal

            options["journal"] = PlatformJournal(
                journalPath, reactor=self.reactor, threaded=False, **(journalOptions or {})
            )
        self.service = PlatformService(
            ["127.0.0.1:%d" % p for p in ports], reactor=self.reactor, **options
        )
        self.service.startService()
        self.pumps = {}
        self.connected = 0
        self.connectPending()

    def connectPending(self):
        """
        Complete every connection attempt made since the last call.
        """
        attempts = self.reactor.tcpClients[self.connected :]
        self.connected = len(self.reactor.tcpClients)
        for host, port, factory, timeout, bind in attempts:
            client = factory.buildProtocol(None)
            server = self.payments[port].buildProtocol(None)
            pump = iosim.connect(
                server,
                iosim.makeFakeServer(server),
                client,
                iosim.makeFakeClient(client),
                clock=self.reactor,
            )
            self.pumps.setdefault(port, []).append(pump)
        self.flush()

    def flush(self):
        """
        Move bytes both ways on every connection until none are left,
        giving the links the reactor turns they need for frames waiting
        their turn.
        """
        while True:
            for pumps in self.pumps.values():
                for pump in pumps:
                    pump.flush(advanceClock=False)
            if not any(
                pump.clientIO.protocol.backlog or pump.serverIO.protocol.backlog
                for pumps in self.pumps.values()
                for pump in pumps
            ):
                return
            self.reactor.advance(0)

    def kill(self, port):
        """
        Drop every connection to C{port} as a dead peer would; the platform
        factories are told, as a real connector would tell them, and start
        their backoff.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        for pump in self.pumps.pop(port, []):
            pump.serverIO.loseConnection()
            pump.flush(advanceClock=False)
        for factory in self.service.factories:
            if factory.port == port:
                factory.clientConnectionLost(RigConnector(self.reactor, factory), Failure(ConnectionLost()))

    def advance(self, seconds, step=0.5):
        """
        Move the clock on by C{seconds} in steps, pumping bytes after each,
        so timers fire at their own times.
        """
        while seconds > 1e-9:
            delta = min(step, seconds)
            self.reactor.advance(delta)
            self.flush()
            seconds -= delta


class RigConnector:
    """
    A connector that, asked to connect again, records a new attempt on the
    MemoryReactor as a real one would.
    """

    def __init__(self, reactor, factory):
        self.reactor = reactor
        self.factory = factory

    def connect(self):
        self.reactor.connectTCP(self.factory.host, self.factory.port, self.factory)

    def stopConnecting(self):
        pass


def frame(message):
    body = json.dumps(message).encode("utf-8") if isinstance(message, dict) else message
    return b"%04d" % (len(body),) + body


def frames(data):
    return [json.loads(b) if b else None for b in wire.FrameDecoder(wire.getHeader("ascii4")).feed(data)]


class Events:
    """
    Collect log events with a C{link_event} field during a test.
    """

    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def named(self, name):
        return [e for e in self.events if e.get("link_event") == name]


@implementer(IMessageHandler)
class RecordingHandler:
    def __init__(self, answer=None):
        self.seen = []
        self.answer = answer if answer is not None else {"resp": "00"}

    def handle(self, message):
        self.seen.append(message)
        if callable(self.answer):
            return self.answer(message)
        return self.answer


class SingleLink:
    """
    A payment-side link on a StringTransport, driven by hand.
    """

    def __init__(self, handler=None, sign_on_timeout=1e9, **options):
        self.clock = Clock()
        options.setdefault("reactor", self.clock)
        self.settings = LinkSettings(**options)
        self.handler = handler or RecordingHandler()
        self.factory = PaymentFactory(self.settings, self.handler, sign_on_timeout=sign_on_timeout)
        self.link = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
        self.link.makeConnection(self.transport)

    def sent(self):
        data = self.transport.value()
        self.transport.clear()
        return frames(data)

    def receive(self, *messages):
        for m in messages:
            self.link.dataReceived(frame(m))

    def signOn(self):
        self.receive({"mti": "0800", "nmi": "001", "sender": "P", "stan": "000001", "time": "0101000000"})
        return self.sent()


def purchase(n=1):
    return {"mti": "0200", "proc": "000000", "pan": "6222020000000000018", "amount": "%012d" % n}


class HoldingHandler(RecordingHandler):
    """
    Answers nothing until told.
    """

    def __init__(self):
        RecordingHandler.__init__(self, answer=self._hold)
        self.held = []

    def _hold(self, message):
        d = Deferred()
        self.held.append(d)
        return d

    def releaseAll(self):
        held, self.held = self.held, []
        for d in held:
            d.callback({"resp": "00"})
