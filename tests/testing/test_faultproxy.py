"""
Tests for L{tvlink.testing.faultproxy}: every mode against an echo server on
127.0.0.1, through the real reactor, with bounded waits and no sleeping,
and mode switching on a proxy that never listens.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.proxykit import HOST, Client, ProxyTestCase, getReactor, waitUntil, within
from tvlink.testing.faultproxy import FaultProxy
from tvlink.testing.modes import Mode, ModeError


class PassTests(ProxyTestCase):
    @inlineCallbacks
    def test_echo(self):
        client = yield self.connect()
        yield self.echoed(client, b"hello")
        self.assertEqual(self.proxy.accepted, 1)
        self.assertEqual(self.proxy.connections, 1)
        self.assertEqual(self.proxy.bytesUp, 5)
        self.assertEqual(self.proxy.bytesDown, 5)
        self.assertEqual(self.echo.accepted, 1)

    @inlineCallbacks
    def test_bulk(self):
        """
        A megabyte each way arrives whole and in order.
        """
        client = yield self.connect()
        data = bytes(range(256)) * 4096
        client.transport.write(data)
        received = yield within(client.waitFor(len(data)), 8)
        self.assertEqual(received, data)
        self.assertEqual(self.proxy.bytesUp, len(data))

    @inlineCallbacks
    def test_clientCloses(self):
        """
        A client's close goes through to the target, and the proxy forgets
        the connection.
        """
        client = yield self.connect()
        yield self.echoed(client, b"bye")
        client.transport.loseConnection()
        reason = yield within(client.lost.wait())
        self.assertIsInstance(reason, ConnectionDone)
        yield waitUntil(lambda: not self.echo.live and self.proxy.connections == 0)

    @inlineCallbacks
    def test_clientResets(self):
        """
        A client's reset resets the connection to the target.
        """
        client = yield self.connect()
        yield self.echoed(client, b"ping")
        client.transport.abortConnection()
        yield waitUntil(lambda: not self.echo.live and self.proxy.connections == 0)

    @inlineCallbacks
    def test_targetCloses(self):
        """
        The target's close reaches the client as a close of its read side.
        """
        client = yield self.connect()
        client.transport.write(b"quit")
        yield within(client.readLost.wait())
        self.assertEqual(client.received, b"quit")
        client.transport.loseConnection()
        yield within(client.lost.wait())
        yield waitUntil(lambda: self.proxy.connections == 0)

    @inlineCallbacks
    def test_slowReader(self):
        """
        A client that does not read pauses the target's side rather than
        filling the proxy's memory; stop() aborts what cannot close.
        """
        import socket

        self.proxy.closeTimeout = 0.3
        client = yield self.connect()
        client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.transport.pauseProducing()
        chunk = bytes(range(256)) * 256
        for _ in range(128):
            client.transport.write(chunk)
        # Whitebox: the proxy's reads from the target are paused because
        # its send buffer toward the client is full.
        (connection,) = self.proxy._connections
        yield waitUntil(lambda: "sink-full" in getattr(connection.target, "held", ()), 5)
        self.assertGreater(self.proxy.pauses, 0)
        reactor = getReactor()
        start = reactor.seconds()
        yield within(self.proxy.stop(), 3)
        self.assertGreaterEqual(reactor.seconds() - start, 0.3)
        self.assertEqual(self.proxy.connections, 0)

    @inlineCallbacks
    def test_targetDown(self):
        """
        A target that refuses the connection closes the client's.
        """
        yield self.echoPort.stopListening()
        client = yield self.connect()
        yield within(client.lost.wait())
        yield waitUntil(lambda: self.proxy.connections == 0)


class DelayTests(ProxyTestCase):
    @inlineCallbacks
    def test_delay(self):
        """
        Each chunk is held C{seconds} each way.
        """
        seconds = 0.3
        self.proxy.setMode("delay", seconds=seconds)
        client = yield self.connect()
        reactor = getReactor()
        start = reactor.seconds()
        yield self.echoed(client, b"slow")
        elapsed = reactor.seconds() - start
        self.assertGreaterEqual(elapsed, seconds)
        self.assertGreaterEqual(elapsed, 2 * seconds - 1e-6)

    @inlineCallbacks
    def test_existingConnection(self):
        client = yield self.connect()
        yield self.echoed(client, b"fast")
        self.proxy.setMode("delay", seconds=0.25)
        reactor = getReactor()
        start = reactor.seconds()
        yield self.echoed(client, b"slow")
        self.assertGreaterEqual(reactor.seconds() - start, 0.25)

    @inlineCallbacks
    def test_shorterDelayKeepsOrder(self):
        """
        A chunk sent after the delay is shortened does not overtake one
        sent before.
        """
        self.proxy.setMode("delay", seconds=0.4)
        client = yield self.connect()
        client.transport.write(b"first ")
        yield waitUntil(lambda: self.proxy.bytesUp == 6)
        self.proxy.setMode("delay", seconds=0.0)
        client.transport.write(b"second")
        received = yield within(client.waitFor(12))
        self.assertEqual(received, b"first second")

    @inlineCallbacks
    def test_passFlushes(self):
        """
        Switching to pass sends what is held at once.
        """
        self.proxy.setMode("delay", seconds=5)
        client = yield self.connect()
        client.transport.write(b"held")
        yield waitUntil(lambda: self.proxy.bytesUp == 4)
        self.proxy.setMode("pass")
        received = yield within(client.waitFor(4), 2)
        self.assertEqual(received, b"held")

    @inlineCallbacks
    def test_closeAfterDelayedBytes(self):
        """
        The target's close reaches the client after the bytes held before
        it.
        """
        self.proxy.setMode("delay", seconds=0.2)
        client = yield self.connect()
        client.transport.write(b"quit")
        yield within(client.readLost.wait())
        self.assertEqual(client.received, b"quit")

    @inlineCallbacks
    def test_backpressure(self):
        """
        A delay queue past the high-water mark pauses the sender; nothing
        is lost.
        """
        self.proxy.highWater = 4096
        self.proxy.setMode("delay", seconds=0.02)
        client = yield self.connect()
        data = bytes(range(256)) * 1024
        client.transport.write(data)
        received = yield within(client.waitFor(len(data)), 8)
        self.assertEqual(received, data)
        self.assertGreater(self.proxy.pauses, 0)

    @inlineCallbacks
    def test_upOnly(self):
        self.proxy.setMode("delay", seconds=0.2, direction="up")
        self.assertEqual(self.proxy.modes, {"up": Mode("delay", 0.2), "down": Mode("pass")})
        client = yield self.connect()
        reactor = getReactor()
        start = reactor.seconds()
        yield self.echoed(client, b"up")
        self.assertGreaterEqual(reactor.seconds() - start, 0.2)


class DropTests(ProxyTestCase):
    @inlineCallbacks
    def test_drop(self):
        """
        Bytes are read and discarded both ways; the connection stays open,
        and echoes again once back to pass.
        """
        client = yield self.connect()
        yield self.echoed(client, b"ping")
        self.proxy.setMode("drop")
        client.transport.write(b"gone")
        yield self.assertSilent(client)
        self.assertEqual(self.proxy.bytesUp, 8)
        self.assertEqual(self.proxy.bytesDropped, 4)
        self.assertEqual(self.echo.received, b"ping")
        self.assertEqual(self.proxy.connections, 1)
        self.proxy.setMode("pass")
        yield self.echoed(client, b"back")

    @inlineCallbacks
    def test_downOnly(self):
        """
        Dropping down only: the target hears the client, the client hears
        nothing.
        """
        self.proxy.setMode("drop", direction="down")
        client = yield self.connect()
        client.transport.write(b"one-way")
        yield waitUntil(lambda: self.echo.received == b"one-way")
        yield self.assertSilent(client, 0.3)
        self.assertEqual(self.proxy.bytesDown, 7)


class BlackholeTests(ProxyTestCase):
    @inlineCallbacks
    def test_newConnection(self):
        """
        A new connection is accepted, never connected onward, never
        answered and never closed.
        """
        self.proxy.setMode("blackhole")
        client = yield self.connect()
        yield waitUntil(lambda: self.proxy.accepted == 1)
        client.transport.write(b"anyone there?")
        yield self.assertSilent(client)
        self.assertEqual(self.echo.accepted, 0)
        self.assertEqual(self.proxy.bytesUp, 13)
        self.assertEqual(self.proxy.connections, 1)

    @inlineCallbacks
    def test_existingConnection(self):
        client = yield self.connect()
        yield self.echoed(client, b"ping")
        self.proxy.setMode("blackhole")
        client.transport.write(b"more")
        yield self.assertSilent(client)
        self.assertEqual(self.echo.received, b"ping")
        self.assertEqual(len(self.echo.live), 1)
        self.assertEqual(self.proxy.connections, 1)

    @inlineCallbacks
    def test_lifted(self):
        """
        Back to pass, a connection accepted in the blackhole is connected
        onward and echoes.
        """
        self.proxy.setMode("blackhole")
        client = yield self.connect()
        yield waitUntil(lambda: self.proxy.accepted == 1)
        self.proxy.setMode("pass")
        yield self.echoed(client, b"hello")
        self.assertEqual(self.echo.accepted, 1)


class ResetTests(ProxyTestCase):
    @inlineCallbacks
    def test_existingConnection(self):
        client = yield self.connect()
        yield self.echoed(client, b"ping")
        self.proxy.setMode("reset")
        reason = yield within(client.lost.wait(), 2)
        self.assertIsInstance(reason, ConnectionLost)
        yield waitUntil(lambda: not self.echo.live and self.proxy.connections == 0)

    @inlineCallbacks
    def test_newConnection(self):
        self.proxy.setMode("reset")
        client = yield self.connect()
        yield within(client.lost.wait(), 2)
        self.assertEqual(self.proxy.accepted, 1)
        self.assertEqual(self.echo.accepted, 0)
        yield waitUntil(lambda: self.proxy.connections == 0)

    @inlineCallbacks
    def test_backToPass(self):
        self.proxy.setMode("reset")
        first = yield self.connect()
        yield within(first.lost.wait(), 2)
        self.proxy.setMode("pass")
        second = yield self.connect()
        yield self.echoed(second, b"again")


class HalfCloseTests(ProxyTestCase):
    @inlineCallbacks
    def test_existingConnection(self):
        """
        The client's read side is closed; the proxy keeps reading what it
        sends and passes it on.
        """
        client = yield self.connect()
        yield self.echoed(client, b"ping")
        self.proxy.setMode("halfclose")
        self.assertEqual(self.proxy.modes, {"up": Mode("pass"), "down": Mode("halfclose")})
        yield within(client.readLost.wait(), 2)
        self.assertFalse(client.lost.fired)
        client.transport.write(b"still here")
        yield waitUntil(lambda: self.echo.received == b"pingstill here")
        self.assertEqual(self.proxy.bytesUp, 14)
        self.assertEqual(client.received, b"ping")

    @inlineCallbacks
    def test_newConnection(self):
        self.proxy.setMode("halfclose")
        client = yield self.connect()
        yield within(client.readLost.wait(), 2)
        client.transport.write(b"hello")
        yield waitUntil(lambda: self.echo.received == b"hello")

    @inlineCallbacks
    def test_upOnly(self):
        """
        Half-closing up closes the write side toward the target; this
        target closes in turn, and its close reaches the client.
        """
        client = yield self.connect()
        yield self.echoed(client, b"ping")
        self.proxy.setMode("halfclose", direction="up")
        self.assertEqual(self.proxy.modes, {"up": Mode("halfclose"), "down": Mode("pass")})
        yield within(client.readLost.wait(), 2)
        yield waitUntil(lambda: not self.echo.live)

    @inlineCallbacks
    def test_closesWhenClientDoes(self):
        """
        Once the client closes its side too, the connection goes away.
        """
        self.proxy.setMode("halfclose")
        client = yield self.connect()
        yield within(client.readLost.wait(), 2)
        client.transport.loseConnection()
        yield within(client.lost.wait())
        yield waitUntil(lambda: self.proxy.connections == 0 and not self.echo.live)


class StopTests(ProxyTestCase):
    @inlineCallbacks
    def test_stop(self):
        """
        stop() closes the port and every connection, whatever its state,
        and leaves no timer behind.
        """
        passing = yield self.connect()
        yield self.echoed(passing, b"ping")
        self.proxy.setMode("blackhole")
        parked = yield self.connect()
        self.proxy.setMode("delay", seconds=5)
        passing.transport.write(b"held")
        yield waitUntil(lambda: self.proxy.accepted == 2 and self.proxy.bytesUp == 8)
        yield within(self.proxy.stop(), 5)
        self.assertEqual(self.proxy.connections, 0)
        yield within(passing.readLost.wait())
        yield within(parked.readLost.wait())
        yield waitUntil(lambda: not self.echo.live)
        endpoint = TCP4ClientEndpoint(getReactor(), HOST, self.proxy.port, timeout=3)
        refused = within(connectProtocol(endpoint, Client()))
        yield self.assertFailure(refused, ConnectionRefusedError)

    @inlineCallbacks
    def test_stopTwice(self):
        client = yield self.connect()
        yield self.echoed(client, b"x")
        first, second = self.proxy.stop(), self.proxy.stop()
        yield within(first)
        yield within(second)
        yield within(self.proxy.stop())
        yield within(client.readLost.wait())


class ModeTests(SynchronousTestCase):
    """
    Mode parsing and directions, on a proxy that never listens.
    """

    def setUp(self):
        self.proxy = FaultProxy("127.0.0.1", 9, reactor=MemoryReactorClock())

    def test_defaults(self):
        self.assertEqual(self.proxy.modes, {"up": Mode("pass"), "down": Mode("pass")})
        self.assertEqual(self.proxy.connections, 0)

    def test_badModes(self):
        for mode, params in (
            ("warp", {}),
            ("delay", {}),
            ("delay", {"seconds": -1}),
            ("delay", {"seconds": float("nan")}),
            ("delay", {"seconds": float("inf")}),
            ("delay", {"seconds": "soon"}),
            ("pass", {"seconds": 1}),
            ("reset", {"direction": "up"}),
            ("pass", {"direction": "sideways"}),
        ):
            self.assertRaises(ModeError, self.proxy.setMode, mode, **params)
        self.assertEqual(self.proxy.modes, {"up": Mode("pass"), "down": Mode("pass")})

    def test_directions(self):
        self.proxy.setMode("halfclose")
        self.assertEqual(self.proxy.modes, {"up": Mode("pass"), "down": Mode("halfclose")})
        self.proxy.setMode("delay", seconds="1.5", direction="up")
        self.assertEqual(self.proxy.modes, {"up": Mode("delay", 1.5), "down": Mode("halfclose")})
        self.proxy.setMode("reset")
        self.assertEqual(self.proxy.modes, {"up": Mode("reset"), "down": Mode("reset")})

