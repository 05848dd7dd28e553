"""
Tests for L{tvlink.testing.faultproxy}: every mode against an echo server on
127.0.0.1, through the real reactor, with bounded waits and no sleeping;
the control commands and the command line.
"""

import io
import os
import sys

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    ProcessDone,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.processes import ReactorTestCase
from tvlink.testing.faultproxy import ControlServer, FaultProxy, Mode, ModeError, main, runCommand

HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def getReactor():
    from twisted.internet import reactor

    return reactor


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


class ControlTests(ProxyTestCase):
    @inlineCallbacks
    def setUp(self):
        yield ProxyTestCase.setUp(self)
        self.control = ControlServer(self.proxy)
        port = yield self.control.start()
        self.addCleanup(lambda: within(self.control.stop()))
        self.commands = ControlClient()
        endpoint = TCP4ClientEndpoint(getReactor(), HOST, port, timeout=3)
        yield within(connectProtocol(endpoint, self.commands))
        self.addCleanup(self.closeCommands)

    def closeCommands(self):
        return closeControl(self.commands)

    @inlineCallbacks
    def test_modeAndStats(self):
        answer = yield self.commands.command("mode delay 0.2")
        self.assertEqual(answer, "ok mode up=delay:0.2 down=delay:0.2")
        self.assertEqual(self.proxy.modes["up"], Mode("delay", 0.2))
        client = yield self.connect()
        reactor = getReactor()
        start = reactor.seconds()
        yield self.echoed(client, b"ping")
        self.assertGreaterEqual(reactor.seconds() - start, 0.2)
        answer = yield self.commands.command("stats")
        self.assertTrue(answer.startswith("ok "), answer)
        stats = dict(word.split("=", 1) for word in answer.split()[1:])
        self.assertEqual(stats["connections"], "1")
        self.assertEqual(stats["accepted"], "1")
        self.assertEqual(stats["bytesUp"], "4")
        self.assertEqual(stats["bytesDown"], "4")
        self.assertEqual(stats["up"], "delay:0.2")
        answer = yield self.commands.command("mode pass")
        self.assertEqual(answer, "ok mode up=pass down=pass")
        answer = yield self.commands.command("mode blackhole")
        self.assertEqual(answer, "ok mode up=blackhole down=blackhole")
        answer = yield self.commands.command("mode halfclose")
        self.assertEqual(answer, "ok mode up=blackhole down=halfclose")
        answer = yield self.commands.command("mode drop up")
        self.assertEqual(answer, "ok mode up=drop down=halfclose")

    @inlineCallbacks
    def test_errors(self):
        for command in (
            "frobnicate",
            "",
            "mode",
            "mode warp",
            "mode delay",
            "mode delay soon",
            "mode delay -1",
            "mode pass 3",
            "mode halfclose sideways",
            "mode reset up",
            "stats please",
        ):
            answer = yield self.commands.command(command)
            self.assertTrue(answer.startswith("error "), (command, answer))
        self.assertEqual(self.proxy.modes, {"up": Mode("pass"), "down": Mode("pass")})

    @inlineCallbacks
    def test_quit(self):
        answer = yield self.commands.command("quit")
        self.assertEqual(answer, "ok bye")
        yield within(self.commands.lost.wait())


class ModeTests(SynchronousTestCase):
    """
    Mode parsing and the control commands, on a proxy that never listens.
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

    def test_commands(self):
        self.assertEqual(
            runCommand(self.proxy, "mode delay 2 down"), ("ok mode up=pass down=delay:2", False)
        )
        self.assertEqual(runCommand(self.proxy, "MODE pass"), ("ok mode up=pass down=pass", False))
        answer, close = runCommand(self.proxy, "help")
        self.assertTrue(answer.startswith("ok commands:"))
        self.assertEqual(runCommand(self.proxy, "quit"), ("ok bye", True))
        answer, close = runCommand(self.proxy, "bogus")
        self.assertIn("unknown command 'bogus'", answer)


class CommandLineTests(SynchronousTestCase):
    def runMain(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), reactor=MemoryReactorClock(), out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def assertUsage(self, argv, message):
        status, out, err = self.runMain(*argv)
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertIn("Usage: python -m tvlink.testing.faultproxy --listen PORT --target HOST:PORT", err)
        self.assertIn("error: " + message, err)

    def test_badArguments(self):
        self.assertUsage([], "--listen PORT is required")
        self.assertUsage(["--listen", "0"], "--target HOST:PORT is required")
        self.assertUsage(["--listen", "http", "--target", "h:1"], "--listen must be a port number")
        self.assertUsage(
            ["--listen", "70000", "--target", "h:1"], "--listen must be a port number from 0"
        )
        self.assertUsage(["--listen", "0", "--target", "nohost"], "--target must be HOST:PORT")
        self.assertUsage(
            ["--listen", "0", "--target", "h:0"], "--target port must be a port number from 1"
        )
        self.assertUsage(
            ["--listen", "0", "--target", "h:1", "--control", "x"], "--control must be a port"
        )
        self.assertUsage(
            ["--listen", "0", "--target", "h:1", "--bogus"], "option --bogus not recognized"
        )


class ProxyProcess(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.errors = b""
        self.announced = Waiters()
        self.ended = Waiters()

    def outReceived(self, data):
        self.output += data
        if b"\n" in self.output:
            self.announced.fire(self.output.split(b"\n", 1)[0].decode("ascii"))

    def errReceived(self, data):
        self.errors += data[:65536]

    def processEnded(self, reason):
        self.ended.fire(reason.value)


class ProcessTests(ProxyTestCase):
    @inlineCallbacks
    def test_runsInAnotherProcess(self):
        """
        C{python -m tvlink.testing.faultproxy} announces its ports and takes
        commands on its control port; SIGTERM stops it cleanly.
        """
        reactor = getReactor()
        process = ProxyProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        args = [
            sys.executable,
            "-m",
            "tvlink.testing.faultproxy",
            "--listen",
            "0",
            "--target",
            "%s:%d" % (HOST, self.echoPort.getHost().port),
            "--control",
            "0",
        ]
        transport = reactor.spawnProcess(process, sys.executable, args, env=env, path=ROOT)

        def kill():
            if not process.ended.fired:
                transport.signalProcess("KILL")
            return within(process.ended.wait(), 5)

        self.addCleanup(kill)
        line = yield within(process.announced.wait(), 6)
        words = dict(word.split("=", 1) for word in line.split()[1:])
        commands = ControlClient()
        endpoint = TCP4ClientEndpoint(reactor, HOST, int(words["control"]), timeout=3)
        yield within(connectProtocol(endpoint, commands))
        self.addCleanup(closeControl, commands)
        answer = yield commands.command("mode delay 0.1")
        self.assertEqual(answer, "ok mode up=delay:0.1 down=delay:0.1")
        client = yield self.connect(int(words["listen"]))
        yield self.echoed(client, b"remote")
        answer = yield commands.command("stats")
        self.assertIn(" accepted=1 ", answer)
        transport.signalProcess("TERM")
        reason = yield within(process.ended.wait(), 5)
        self.assertIsInstance(reason, ProcessDone, process.errors)
        yield within(client.readLost.wait())
