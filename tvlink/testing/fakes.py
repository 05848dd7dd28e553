"""
Fakes for the tests of an application that embeds tvlink: a payment node
whose answers the test scripts, and a platform link joined to a payment
side in memory, on a L{Clock}.

    - L{ScriptedHandler} answers each request by the newest rule that
      matches it (approve, decline with a code, hold until released, never
      answer, or any function) and records every request it is given.
    - L{FakePaymentNode} is a scripted handler behind a real payment-side
      factory: joined in memory to a L{FakePlatform}, or listening on a
      port of its reactor (a real one for loopback tests).
    - L{FakePlatform} is a real platform link joined to a payment side by
      an iosim pump on one clock, signed on by the time it is built.

Every byte goes through the framing, the codec, the sign-on and the link's
timers; only the sockets are missing, and time moves only when the test
moves it.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from tvlink.errors import LinkNotReady
from tvlink.link.interfaces import IMessageHandler
from tvlink.link.service import failNow
from tvlink.link.settings import LinkSettings
from tvlink.link.wire import APPROVED
from tvlink.payment.service import PaymentFactory
from tvlink.platform.service import PlatformFactory, PlatformHandler

__all__ = ["FakePaymentNode", "FakePlatform", "HeldRequest", "ScriptedHandler"]

#: The address the in-memory links are built for.
_MEMORY_ADDRESS = IPv4Address("TCP", "127.0.0.1", 7000)


def _matcher(match):
    """
    A predicate on messages: C{None} matches every message, an MTI string
    the messages of that MTI, a C{dict} the messages with those field
    values, and a callable is the predicate itself.
    """
    if match is None:
        return lambda message: True
    if callable(match):
        return match
    if isinstance(match, str):
        match = {"mti": match}
    fields = dict(match).items()
    return lambda message: all(message.get(name) == value for name, value in fields)


class HeldRequest:
    """
    A request a L{ScriptedHandler} holds until the test answers it.

    @ivar message: the request.
    """

    def __init__(self, handler, message):
        self.handler = handler
        self.message = message
        self.deferred = Deferred()

    @property
    def answered(self):
        return self.deferred.called

    def answer(self, resp=APPROVED, **fields):
        """
        Answer the request now with C{resp} and any other C{fields}.
        """
        self.handler.held.remove(self)
        self.deferred.callback(dict(fields, resp=resp))


@implementer(IMessageHandler)
class ScriptedHandler:
    """
    An L{IMessageHandler} that answers each request by the newest rule that
    matches it, and approves (C{00}) what no rule matches.

    Each rule method takes C{match}: C{None} (every request, the default),
    an MTI (C{"0200"}), a C{dict} of field values (C{{"mti": "0200",
    "proc": "000000"}}), or a predicate on the message. Rule methods return
    the handler, so they chain.

    @ivar received: every request the handler was given, oldest first
        (the link answers sign-on and echo tests itself: they are not here).
    @ivar held: the L{HeldRequest}s not yet answered, oldest first.
    """

    def __init__(self):
        self.received = []
        self.held = []
        self.rules = []

    def respond(self, responder, match=None):
        """
        Answer the matching requests with C{responder(message)}: an answer
        C{dict} with at least C{resp}, or a L{Deferred} firing with one.
        """
        self.rules.insert(0, (_matcher(match), responder))
        return self

    def approve(self, match=None, **fields):
        """
        Answer the matching requests C{00}, with C{fields} added.
        """
        return self.respond(lambda message: dict(fields, resp=APPROVED), match)

    def decline(self, resp, match=None, **fields):
        """
        Answer the matching requests with the response code C{resp}, with
        C{fields} added.
        """
        return self.respond(lambda message: dict(fields, resp=resp), match)

    def hold(self, match=None):
        """
        Answer the matching requests only when the test says: each waits in
        L{held} for L{HeldRequest.answer} or L{release}.
        """
        return self.respond(self._hold, match)

    def ignore(self, match=None):
        """
        Never answer the matching requests.
        """
        return self.respond(lambda message: Deferred(), match)

    def reset(self):
        """
        Forget every rule: approve everything again.
        """
        del self.rules[:]
        return self

    def release(self, resp=APPROVED, **fields):
        """
        Answer every held request with C{resp} and C{fields}.

        @return: how many were answered.
        """
        held = list(self.held)
        for request in held:
            request.answer(resp, **fields)
        return len(held)

    def _hold(self, message):
        request = HeldRequest(self, message)
        self.held.append(request)
        return request.deferred

    def handle(self, message):
        self.received.append(message)
        for matches, responder in self.rules:
            if matches(message):
                return responder(message)
        return {"resp": APPROVED}


class FakePaymentNode(ScriptedHandler):
    """
    A payment node for tests: a real L{PaymentFactory} in front of the
    node's own rules (see L{ScriptedHandler}).

    Join it to a platform in memory with L{FakePlatform}, or L{listen} on
    its reactor: on a real reactor a platform connects to L{address} over
    loopback; on a L{twisted.internet.testing.MemoryReactorClock} the
    listener is only recorded.

    @param reactor: what the node's timers run on and L{listen} listens
        on; by default a new L{Clock}.
    @param options: L{LinkSettings} options (C{heartbeat},
        C{idle_timeout}, C{timeout}, ...).
    @ivar factory: the L{PaymentFactory}.
    """

    def __init__(
        self,
        reactor=None,
        sender="PAYMENT",
        sign_on_timeout=30.0,
        max_links=1000,
        max_links_per_peer=100,
        **options
    ):
        ScriptedHandler.__init__(self)
        self.reactor = reactor if reactor is not None else Clock()
        self.settings = LinkSettings(reactor=self.reactor, sender=sender, **options)
        self.factory = PaymentFactory(
            self.settings, self, max_links, max_links_per_peer, sign_on_timeout
        )
        self.port = None

    @property
    def links(self):
        """
        The links that have signed on, in the order they did.
        """
        return list(self.factory.readyLinks)

    def request(self, message, timeout=None):
        """
        Send request C{message} (a C{0820} notification, say) to the
        platform on the first ready link.

        @return: a L{Deferred} firing with the answer, or failing with
            L{LinkNotReady} when no platform has signed on.
        """
        if not self.factory.readyLinks:
            return failNow(LinkNotReady("no platform has signed on to the fake payment node"))
        try:
            return self.factory.readyLinks[0].request(message, timeout)
        except Exception as e:
            return failNow(e)

    def listen(self, port=0, interface="127.0.0.1"):
        """
        Listen on C{interface:port} of the node's reactor.

        @return: a L{Deferred} firing with the port number listened on.
        """
        d = maybeDeferred(self.reactor.listenTCP, port, self.factory, interface=interface)

        def listening(listeningPort):
            self.port = listeningPort
            return listeningPort.getHost().port

        return d.addCallback(listening)

    def address(self):
        """
        C{"host:port"} listened on, for L{tvlink.PlatformService}; C{None}
        before L{listen}.
        """
        if self.port is None:
            return None
        host = self.port.getHost()
        return "%s:%d" % (host.host, host.port)

    def stop(self):
        """
        Stop listening and close every link.

        @return: a L{Deferred} firing with C{None} once all are closed.
        """
        waits = [self.factory.closeAll()]
        port, self.port = self.port, None
        if port is not None:
            waits.append(maybeDeferred(port.stopListening))
        return gatherResults(waits).addCallback(lambda _: None)


class FakePlatform:
    """
    A platform link joined in memory to a payment side by an iosim pump on
    one clock, and signed on by the time it is built.

    @param payment: the payment side: a L{FakePaymentNode} (by default a
        new one, on C{clock}), a payment-side factory such as
        L{PaymentFactory}, or an L{IMessageHandler} (the handler under
        test) to put behind a new L{PaymentFactory}.
    @param clock: the L{Clock} both sides run on; by default the payment
        side's, or a new one.
    @param handler: answers the payment side's requests to the platform;
        by default a L{PlatformHandler} (C{0820} answered C{00}).
    @param options: L{LinkSettings} options for the platform link, and
        for the payment link too when this makes the payment side.

    @ivar link: the platform link.
    @ivar paymentLink: the payment link.
    @ivar node: the L{FakePaymentNode}, if the payment side is one.
    @ivar pump: the L{iosim.IOPump} between them.
    """

    def __init__(self, payment=None, clock=None, handler=None, sender="PLATFORM", **options):
        self.node = None
        if payment is None:
            payment = FakePaymentNode(reactor=clock, **options)
        if isinstance(payment, FakePaymentNode):
            self.node = payment
            payment = payment.factory
        elif IMessageHandler.providedBy(payment):
            clock = clock if clock is not None else Clock()
            settings = LinkSettings(reactor=clock, sender="PAYMENT", **options)
            payment = PaymentFactory(settings, payment)
        if clock is None:
            clock = payment.clock
        elif clock is not payment.clock:
            raise ValueError("the payment side runs on another clock than %r" % (clock,))
        self.clock = clock
        self.paymentFactory = payment
        self.settings = LinkSettings(reactor=clock, sender=sender, **options)
        self.factory = PlatformFactory(
            "%s:%d" % (_MEMORY_ADDRESS.host, _MEMORY_ADDRESS.port),
            self.settings,
            handler if handler is not None else PlatformHandler(),
            random=lambda: 1.0,
        )
        self.paymentLink = payment.buildProtocol(_MEMORY_ADDRESS)
        self.link = self.factory.buildProtocol(_MEMORY_ADDRESS)
        self.paymentTransport = iosim.makeFakeServer(self.paymentLink)
        self.transport = iosim.makeFakeClient(self.link)
        self.pump = iosim.connect(
            self.paymentLink,
            self.paymentTransport,
            self.link,
            self.transport,
            greet=True,
            clock=clock,
        )

    @property
    def ready(self):
        """
        Whether the platform link is signed on.
        """
        return self.link.ready

    def request(self, message, timeout=None):
        """
        Send request C{message} on the platform link and move the bytes.

        @return: a L{Deferred} firing with the answer (already, unless the
            payment side holds it), or failing with L{tvlink.RequestTimeout}
            once the clock passes C{timeout} (default: the settings').
        """
        d = self.link.request(message, timeout)
        self.flush()
        return d

    def flush(self):
        """
        Move bytes both ways until none are left, giving the links the
        reactor turns they need for frames waiting their turn. The clock
        does not move on.
        """
        self.pump.flush(advanceClock=False)
        while self.paymentLink.backlog or self.link.backlog:
            self.clock.advance(0)
            self.pump.flush(advanceClock=False)

    def advance(self, seconds, step=None):
        """
        Move the clock forward C{seconds}, moving the bytes after every
        C{step} (by default, once at the end).
        """
        step = step or seconds
        elapsed = 0.0
        while elapsed < seconds:
            delta = min(step, seconds - elapsed)
            self.clock.advance(delta)
            elapsed += delta
            self.flush()

    def close(self):
        """
        Close the platform link and move the bytes of its close.
        """
        self.link.close()
        self.flush()
