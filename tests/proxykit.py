"""
Helpers for the fault proxy's tests: an echo server and clients on
127.0.0.1 through the real reactor, bounded waits with no sleeping, and a
test case with a L{FaultProxy} in front of the echo server.
"""

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from tests.processes import ReactorTestCase, getReactor
from tvlink.testing.faultproxy import FaultProxy

HOST = "127.0.0.1"



def within(d, seconds=3.0):
    """
    C{d}, failing with L{twisted.internet.defer.TimeoutError} after
    C{seconds}.
    """
    return d.addTimeout(seconds, getReactor())


def settle(seconds):
    """
    A L{Deferred} firing after C{seconds} of reactor time.
    """
    return deferLater(getReactor(), seconds, lambda: None)


@inlineCallbacks
def waitUntil(predicate, seconds=3.0, interval=0.01):
    """
    Poll C{predicate} until it is true; fail after C{seconds}.
    """
    reactor = getReactor()
    deadline = reactor.seconds() + seconds
    for _ in range(int(seconds / interval) + 1):
        if predicate():
            return
        if reactor.seconds() >= deadline:
            break
        yield settle(interval)
    if not predicate():
        raise AssertionError("condition not met within %.1fs" % (seconds,))


class Waiters:
    """
    Deferreds waiting for one event, each fired once it happens.
    """

    def __init__(self):
        self.fired = False
        self.result = None
        self._waiting = []

    def wait(self):
        d = Deferred()
        if self.fired:
            d.callback(self.result)
        else:
            self._waiting.append(d)
        return d

    def fire(self, result=None):
        if self.fired:
            return
        self.fired, self.result = True, result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result)


class Echo(Protocol):
    def connectionMade(self):
        self.factory.live.add(self)
        self.factory.accepted += 1

    def dataReceived(self, data):
        self.factory.received += data
        self.transport.write(data)
        if self.factory.received.endswith(b"quit"):
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.factory.live.discard(self)


class EchoFactory(Factory):
    protocol = Echo
    noisy = False

    def __init__(self):
        self.live = set()
        self.accepted = 0
        self.received = b""


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """
    A test client that records what it hears and how its connection ends.
    """

    def __init__(self):
        self.received = b""
        self.lostReason = None
        self.readLost = Waiters()
        self.lost = Waiters()
        self._wanted = []

    def dataReceived(self, data):
        self.received += data
        wanted, self._wanted = self._wanted, []
        for count, d in wanted:
            if len(self.received) >= count:
                d.callback(self.received)
            else:
                self._wanted.append((count, d))

    def waitFor(self, count):
        """
        A L{Deferred} firing with everything received once there are at
        least C{count} bytes.
        """
        d = Deferred()
        if len(self.received) >= count:
            d.callback(self.received)
        else:
            self._wanted.append((count, d))
        return d

    def readConnectionLost(self):
        self.readLost.fire()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lostReason = reason
        self.readLost.fire()
        self.lost.fire(reason.value)


class ControlClient(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self):
        self.lines = []
        self.lost = Waiters()
        self._wanted = []

    def lineReceived(self, line):
        self.lines.append(line.decode("ascii"))
        if self._wanted:
            self._wanted.pop(0).callback(self.lines[-1])

    def command(self, text):
        """
        Send C{text}; a L{Deferred} firing with the answer line.
        """
        d = Deferred()
        self._wanted.append(d)
        self.sendLine(text.encode("ascii"))
        return within(d)

    def connectionLost(self, reason):
        self.lost.fire(reason.value)


def closeControl(commands):
    if not commands.lost.fired:
        commands.transport.abortConnection()
    return within(commands.lost.wait())


class RealReactorTestCase(ReactorTestCase):
    timeout = 9


class ProxyTestCase(RealReactorTestCase):
    """
    An echo server on 127.0.0.1 and a L{FaultProxy} in front of it.
    """

    @inlineCallbacks
    def setUp(self):
        reactor = getReactor()
        self.echo = EchoFactory()
        self.echoPort = reactor.listenTCP(0, self.echo, interface=HOST)
        self.addCleanup(self.stopEcho)
        self.proxy = FaultProxy(HOST, self.echoPort.getHost().port, reactor=reactor)
        port = yield self.proxy.start()
        self.assertEqual(port, self.proxy.port)
        self.addCleanup(lambda: within(self.proxy.stop(), 5))

    @inlineCallbacks
    def stopEcho(self):
        if self.echoPort.connected:
            yield self.echoPort.stopListening()
        for echo in list(self.echo.live):
            echo.transport.abortConnection()
        yield waitUntil(lambda: not self.echo.live)

    @inlineCallbacks
    def connect(self, port=None):
        client = Client()
        endpoint = TCP4ClientEndpoint(getReactor(), HOST, port or self.proxy.port, timeout=3)
        yield within(connectProtocol(endpoint, client))
        self.addCleanup(self.closeClient, client)
        return client

    def closeClient(self, client):
        if not client.lost.fired:
            client.transport.abortConnection()
        return within(client.lost.wait())

    @inlineCallbacks
    def echoed(self, client, data):
        """
        Send C{data}; fire once it has come back.
        """
        before = len(client.received)
        client.transport.write(data)
        received = yield within(client.waitFor(before + len(data)))
        self.assertEqual(received[before:], data)

    @inlineCallbacks
    def assertSilent(self, client, seconds=0.5):
        """
        Nothing more arrives on C{client} for C{seconds}, and it stays
        connected.
        """
        before = client.received
        yield settle(seconds)
        self.assertEqual(client.received, before)
        self.assertFalse(client.readLost.fired, "the connection was closed")

