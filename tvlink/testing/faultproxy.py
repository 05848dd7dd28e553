"""
A TCP proxy that injects faults between a client and its target, for
tests and benchmarks.

A L{FaultProxy} accepts connections, opens one connection to the target
for each, and copies bytes both ways. What happens to the bytes (and to
the connections) is its mode, switched at any time with
L{FaultProxy.setMode} and applied at once to existing connections as well
as new ones:

    - C{pass}: bytes go through.
    - C{delay}: each chunk goes through after C{seconds}, in order.
    - C{drop}: bytes are read and discarded; connections stay open.
    - C{blackhole}: bytes are discarded and new connections are accepted
      but never connected onward; nothing is ever closed.
    - C{reset}: every connection is aborted (RST), new ones as soon as they
      are accepted.
    - C{halfclose}: the write side toward the client is closed (FIN); the
      proxy keeps reading.

C{up} is client to target, C{down} target to client; C{pass}, C{delay},
C{drop}, C{blackhole} and C{halfclose} may be set for one direction only.
One direction in C{blackhole} discards what goes that way; it is C{up}
in C{blackhole} that keeps new connections from being connected onward
(they are connected once C{up} leaves it). C{halfclose} up closes the
write side toward the target instead.

A close is passed on as it came (FIN as FIN once the bytes before it are
through, reset as reset) in C{pass}, C{delay} and C{drop}; C{blackhole}
and C{halfclose} pass on nothing.

Nothing is buffered without bound: a delay queue past L{FaultProxy.highWater}
bytes, or a receiver whose send buffer is full, pauses the sender.

A L{ControlServer} lets another process drive a proxy with line commands;
C{python -m tvlink.testing.faultproxy --help} runs one from the command line.
"""

import math
import sys
from collections import deque

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone, NotConnectingError
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "MODES",
    "ControlServer",
    "FaultProxy",
    "Mode",
    "ModeError",
    "Options",
    "main",
    "runCommand",
]

UP = "up"
DOWN = "down"
BOTH = "both"
DIRECTIONS = (UP, DOWN)

MODES = ("pass", "delay", "drop", "blackhole", "reset", "halfclose")

# Modes that carry bytes to the other side, and modes that carry a close
# (FIN, or the end of the connection) to the other side.
_FORWARDING = ("pass", "delay")
_CLOSE_FORWARDING = ("pass", "delay", "drop")


def _globalReactor():
    """
    The global reactor, imported only when a caller injected none.
    """
    import twisted.internet.reactor

    return twisted.internet.reactor


class ModeError(ValueError):
    """
    A mode, a mode parameter or a direction that the proxy does not know.
    """


class Mode:
    """
    What happens to the bytes going one way: a name from L{MODES} and, for
    C{delay}, the seconds each chunk is held.
    """

    __slots__ = ("name", "seconds")

    def __init__(self, name, seconds=0.0):
        self.name = name
        self.seconds = seconds

    @classmethod
    def fromParameters(cls, name, params):
        """
        The L{Mode} C{name} with keyword parameters C{params}.

        @raise ModeError: for an unknown name or a bad or missing parameter.
        """
        if name not in MODES:
            raise ModeError("unknown mode %r (one of %s)" % (name, ", ".join(MODES)))
        params = dict(params)
        seconds = 0.0
        if name == "delay":
            if "seconds" not in params:
                raise ModeError("mode delay needs seconds")
            seconds = _seconds(params.pop("seconds"))
        if params:
            raise ModeError(
                "mode %s takes no parameter %s" % (name, ", ".join(sorted(params)))
            )
        return cls(name, seconds)

    def __eq__(self, other):
        if not isinstance(other, Mode):
            return NotImplemented
        return (self.name, self.seconds) == (other.name, other.seconds)

    def __hash__(self):
        return hash((self.name, self.seconds))

    def __str__(self):
        if self.name == "delay":
            return "delay:%g" % (self.seconds,)
        return self.name

    def __repr__(self):
        return "<Mode %s>" % (self,)


def _seconds(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ModeError("delay seconds must be a number, not %r" % (value,)) from None
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ModeError("delay seconds must be zero or more, not %r" % (value,))
    return seconds


def _directions(name, direction):
    """
    The directions a C{setMode(name, direction=direction)} changes.
    """
    if direction is None:
        direction = DOWN if name == "halfclose" else BOTH
    if direction not in (UP, DOWN, BOTH):
        raise ModeError("direction must be up, down or both, not %r" % (direction,))
    if name == "reset" and direction != BOTH:
        raise ModeError("mode reset applies to both directions, not %s" % (direction,))
    return DIRECTIONS if direction == BOTH else (direction,)


@implementer(IHalfCloseableProtocol)
class _Endpoint(Protocol):
    """
    One side of a proxied connection: the client's connection to the
    proxy, or the proxy's connection to the target. It hands what it hears
    to its L{ProxiedConnection}, and can be paused for several reasons at
    once.
    """

    readClosed = False
    writeClosed = False
    lost = False
    lostCleanly = False

    def __init__(self, connection=None):
        self.connection = connection
        self._holds = set()
        self._paused = False

    @property
    def held(self):
        """
        Why reading is paused now: a C{frozenset} of reasons
        (C{"connecting"}, C{"sink-full"}, C{"queue-full"}), empty if it is
        not.
        """
        return frozenset(self._holds)

    def hold(self, reason):
        """
        Stop reading until every reason given here is released.
        """
        self._holds.add(reason)
        self._applyHolds()

    def release(self, reason):
        self._holds.discard(reason)
        self._applyHolds()

    def _applyHolds(self):
        # A transport whose read side is closed must never be resumed: it
        # would read its end of file again.
        if self.transport is None or self.lost or self.readClosed:
            return
        if self._holds and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not self._holds and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def closeWrite(self):
        """
        Send FIN: close the write side, keep reading.
        """
        if self.lost or self.writeClosed:
            return
        self.writeClosed = True
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()

    def close(self):
        """
        Close both sides once what is already written is sent.
        """
        if not self.lost:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def abort(self):
        """
        Close at once with a reset.
        """
        if not self.lost:
            self.transport.abortConnection()

    def dataReceived(self, data):
        self.connection.received(self, data)

    def readConnectionLost(self):
        self.readClosed = True
        self.connection.readLost(self)
        self._closeIfDone()

    def writeConnectionLost(self):
        self.writeClosed = True
        self._closeIfDone()

    def _closeIfDone(self):
        # Both halves are closed: nothing more can happen on this socket.
        if self.readClosed and self.writeClosed and not self.lost:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lost = True
        self.lostCleanly = reason.check(ConnectionDone) is not None
        self.connection.sideLost(self, reason)


class _ClientSide(_Endpoint):
    """
    A client's connection to the proxy.
    """

    def connectionMade(self):
        self.factory.proxy._accepted(self)


class _TargetSide(_Endpoint):
    """
    The proxy's connection to the target, for one client.
    """

    def connectionMade(self):
        self.connection.targetConnected(self)


class _ClientSideFactory(Factory):
    noisy = False

    def __init__(self, proxy):
        self.proxy = proxy

    def buildProtocol(self, addr):
        side = _ClientSide()
        side.factory = self
        return side


class _TargetSideFactory(ClientFactory):
    noisy = False

    def __init__(self, connection):
        self.connection = connection

    def buildProtocol(self, addr):
        return _TargetSide(self.connection)

    def clientConnectionFailed(self, connector, reason):
        self.connection.connectFailed(reason)


@implementer(IPushProducer)
class _Pipe:
    """
    One direction of a proxied connection: bytes read from C{source},
    treated as the proxy's mode for this direction says, written to
    C{sink}.

    The pipe is the streaming producer registered on the sink's transport,
    so a full send buffer pauses the source; its delay queue pauses the
    source past the proxy's C{highWater} bytes too.

    @ivar ended: the source sent FIN.
    @ivar finished: the sink's write side is closed (or closing).
    """

    def __init__(self, connection, direction):
        self.connection = connection
        self.direction = direction
        self.proxy = connection.proxy
        self.clock = connection.proxy.reactor
        self._queue = deque()
        self._queued = 0
        self._lastDue = 0.0
        self._call = None
        self._registered = False
        self._closeWhenDrained = False
        self.ended = False
        self.finished = False

    @property
    def source(self):
        connection = self.connection
        return connection.client if self.direction == UP else connection.target

    @property
    def sink(self):
        connection = self.connection
        return connection.target if self.direction == UP else connection.client

    @property
    def mode(self):
        return self.proxy._modes[self.direction]

    def _sinkOpen(self):
        sink = self.sink
        return sink is not None and not sink.lost and not self.finished

    # -- bytes ------------------------------------------------------------

    def feed(self, data):
        """
        Bytes read from the source.
        """
        proxy = self.proxy
        if self.direction == UP:
            proxy.bytesUp += len(data)
        else:
            proxy.bytesDown += len(data)
        mode = self.mode
        if mode.name not in _FORWARDING or not self._sinkOpen():
            proxy.bytesDropped += len(data)
            return
        if not self._queue and not (mode.name == "delay" and mode.seconds > 0):
            self.sink.transport.write(data)
            return
        due = max(self.clock.seconds() + mode.seconds, self._lastDue)
        self._lastDue = due
        self._queue.append((due, data))
        self._queued += len(data)
        if self._queued > proxy.highWater:
            self._holdSource("queue-full")
        self._schedule()

    def _schedule(self):
        if self._call is None and self._queue:
            delay = max(0.0, self._queue[0][0] - self.clock.seconds())
            self._call = self.clock.callLater(delay, self._release)

    def _release(self):
        self._call = None
        now = self.clock.seconds()
        chunks = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            chunks.append(queue.popleft()[1])
        if chunks:
            self._sent(chunks)
        self._schedule()
        self._drained()

    def _sent(self, chunks):
        data = b"".join(chunks)
        self._queued -= len(data)
        if self._sinkOpen():
            self.sink.transport.write(data)
        else:
            self.proxy.bytesDropped += len(data)
        if self._queued <= self.proxy.highWater // 2:
            self._releaseSource("queue-full")

    def _flush(self):
        """
        Send everything queued now.
        """
        self._cancelCall()
        if self._queue:
            chunks = [data for due, data in self._queue]
            self._queue.clear()
            self._sent(chunks)
        self._drained()

    def _discard(self):
        """
        Forget everything queued.
        """
        self._cancelCall()
        if self._queue:
            self.proxy.bytesDropped += self._queued
            self._queue.clear()
            self._queued = 0
        self._releaseSource("queue-full")

    def _cancelCall(self):
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _drained(self):
        # Once the queue is empty, pass on a close the source sent.
        if self._queue:
            return
        if self._closeWhenDrained and self._sinkOpen():
            self.finished = True
            self._unregister()
            self.sink.close()
        elif self.ended and self.mode.name in _CLOSE_FORWARDING and self._sinkOpen():
            self._closeSink()

    # -- producer for the sink ----------------------------------------------

    def attach(self):
        """
        Both sides are connected: apply backpressure from the sink.
        """
        if self._sinkOpen() and not self.sink.writeClosed and not self._registered:
            self._registered = True
            self.sink.transport.registerProducer(self, True)

    def _unregister(self):
        if self._registered:
            self._registered = False
            sink = self.sink
            if sink is not None and not sink.lost:
                sink.transport.unregisterProducer()
        self._releaseSource("sink-full")

    def _holdSource(self, reason):
        source = self.source
        if source is not None and reason not in source._holds:
            if reason != "connecting":
                self.proxy.pauses += 1
            source.hold(reason)

    def _releaseSource(self, reason):
        source = self.source
        if source is not None:
            source.release(reason)

    def pauseProducing(self):
        self._holdSource("sink-full")

    def resumeProducing(self):
        self._releaseSource("sink-full")

    def stopProducing(self):
        self._registered = False
        self._releaseSource("sink-full")

    # -- state ------------------------------------------------------------

    def sync(self):
        """
        Bring this direction in line with the proxy's current mode.
        """
        name = self.mode.name
        if name == "pass":
            self._flush()
        elif name != "delay":
            self._discard()
        if name == "halfclose":
            self._closeSink()
        self._drained()

    def _closeSink(self):
        if self._sinkOpen():
            self.finished = True
            self._discard()
            self._unregister()
            self.sink.closeWrite()

    def sourceEnded(self):
        """
        The source sent FIN.
        """
        self.ended = True
        self._drained()

    def sourceLost(self, cleanly):
        """
        The source is gone. A clean close is passed on once the queue is
        sent; anything else resets the sink. A mode that keeps the sink
        silent (C{blackhole}, C{halfclose}) passes on nothing.
        """
        self.ended = True
        if self.mode.name not in _CLOSE_FORWARDING or not self._sinkOpen():
            return
        if cleanly:
            self._closeWhenDrained = True
            self._drained()
        else:
            self.finished = True
            self._discard()
            self.sink.abort()

    def sinkLost(self):
        self.finished = True
        self._registered = False
        self._discard()
        self._releaseSource("sink-full")

    def shutdown(self):
        """
        Forget queued bytes and the sink, ready for a close.
        """
        self._discard()
        self._unregister()
        self.finished = True


class ProxiedConnection:
    """
    One client connection through a L{FaultProxy}, and the proxy's
    connection to the target made for it.

    @ivar state: C{"parked"} (not connected onward: blackhole),
        C{"connecting"}, C{"connected"}, or C{"failed"}.
    """

    log = Logger()

    def __init__(self, proxy, client, number):
        self.proxy = proxy
        self.client = client
        client.connection = self
        self.number = number
        self.target = None
        self.connector = None
        self.state = "parked"
        self.closing = False
        self.up = _Pipe(self, UP)
        self.down = _Pipe(self, DOWN)

    def __repr__(self):
        return "<ProxiedConnection #%d %s>" % (self.number, self.state)

    def begin(self):
        """
        The client has just been accepted.
        """
        if self.proxy._resetting():
            self.client.abort()
            return
        self.down.sync()
        if self.proxy._modes[UP].name != "blackhole":
            self.connect()

    def connect(self):
        proxy = self.proxy
        self.state = "connecting"
        self.up._holdSource("connecting")
        self.connector = proxy.reactor.connectTCP(
            proxy.targetHost,
            proxy.targetPort,
            _TargetSideFactory(self),
            timeout=proxy.connectTimeout,
        )

    def targetConnected(self, target):
        self.target = target
        self.state = "connected"
        self.connector = None
        client = self.client
        if client.lost or self.closing:
            if client.lostCleanly and not self.closing:
                target.close()
            else:
                target.abort()
            return
        self.log.debug("connection #{number} connected to the target", number=self.number)
        self.up.attach()
        self.down.attach()
        self.up._releaseSource("connecting")
        self.up.sync()
        self.down.sync()

    def connectFailed(self, reason):
        self.connector = None
        self.state = "failed"
        if not self.client.lost and not self.closing:
            self.log.warn(
                "connection #{number}: cannot reach {host}:{port}: {why}",
                number=self.number,
                host=self.proxy.targetHost,
                port=self.proxy.targetPort,
                why=reason.getErrorMessage(),
            )
        if not self.closing:
            self.client.abort()
        self._checkDone()

    def _stopConnecting(self):
        if self.state == "connecting" and self.connector is not None:
            try:
                self.connector.stopConnecting()
            except NotConnectingError:
                pass

    def _pipes(self, side):
        """
        The pipe C{side} feeds, and the pipe that feeds it.
        """
        return (self.up, self.down) if side is self.client else (self.down, self.up)

    def received(self, side, data):
        self._pipes(side)[0].feed(data)

    def readLost(self, side):
        self._pipes(side)[0].sourceEnded()

    def sideLost(self, side, reason):
        outgoing, incoming = self._pipes(side)
        incoming.sinkLost()
        if not self.closing:
            outgoing.sourceLost(side.lostCleanly)
        if side is self.client:
            self._stopConnecting()
        self._checkDone()

    def modeChanged(self):
        if self.closing:
            return
        if self.proxy._resetting():
            self.abort()
            return
        self.down.sync()
        self.up.sync()
        if (
            self.state == "parked"
            and self.proxy._modes[UP].name != "blackhole"
            and not self.client.lost
            and not self.closing
        ):
            self.connect()

    def close(self):
        """
        Close both sides cleanly.
        """
        self._end("close")

    def abort(self):
        """
        Reset both sides.
        """
        self._end("abort")

    def _end(self, how):
        self.closing = True
        self.up.shutdown()
        self.down.shutdown()
        self._stopConnecting()
        for side in (self.client, self.target):
            if side is not None:
                getattr(side, how)()

    def _checkDone(self):
        targetGone = self.target is None or self.target.lost
        if self.client.lost and targetGone and self.state != "connecting":
            self.proxy._connectionDone(self)


class FaultProxy:
    """
    A TCP proxy from C{interface:listen_port} to C{target_host:target_port}
    that injects faults (see the module docstring for the modes).

    @ivar port: the listening port number once L{start} has fired.
    @ivar accepted: connections accepted, in total.
    @ivar bytesUp: bytes read from clients.
    @ivar bytesDown: bytes read from targets.
    @ivar bytesDropped: bytes read and then discarded.
    @ivar pauses: how often a sender was paused for backpressure.
    @ivar highWater: bytes a delay queue may hold before its sender is
        paused.
    @ivar connectTimeout: seconds allowed to connect to the target.
    @ivar closeTimeout: seconds L{stop} waits for clean closes before it
        aborts what is left.
    """

    log = Logger()

    highWater = 256 * 1024
    connectTimeout = 10.0
    closeTimeout = 2.0

    def __init__(
        self, target_host, target_port, reactor=None, listen_port=0, interface="127.0.0.1"
    ):
        self.reactor = reactor if reactor is not None else _globalReactor()
        self.targetHost = target_host
        self.targetPort = int(target_port)
        self.listenPort = int(listen_port)
        self.interface = interface
        self.port = None
        self.accepted = 0
        self.bytesUp = 0
        self.bytesDown = 0
        self.bytesDropped = 0
        self.pauses = 0
        self._modes = {UP: Mode("pass"), DOWN: Mode("pass")}
        self._listening = None
        self._connections = set()
        self._idleWaiters = []
        self._stopWaiters = []
        self._stopping = False

    @property
    def connections(self):
        """
        How many proxied connections are open now.
        """
        return len(self._connections)

    @property
    def modes(self):
        """
        The current L{Mode} of each direction, as C{{"up": …, "down": …}}.
        """
        return dict(self._modes)

    def start(self):
        """
        Start listening.

        @return: a L{Deferred} firing with the listening port number.
        """
        if self._listening is not None:
            return succeed(self.port)
        d = maybeDeferred(
            self.reactor.listenTCP,
            self.listenPort,
            _ClientSideFactory(self),
            interface=self.interface,
        )
        d.addCallback(self._started)
        return d

    def _started(self, listening):
        self._listening = listening
        self.port = listening.getHost().port
        self.log.info(
            "fault proxy on {interface}:{port} to {host}:{target}",
            interface=self.interface,
            port=self.port,
            host=self.targetHost,
            target=self.targetPort,
        )
        return self.port

    def stop(self):
        """
        Stop listening and close every proxied connection (aborting those
        that do not close within L{closeTimeout}).

        @return: a L{Deferred} firing with C{None} once the port and every
            connection are closed.
        """
        d = Deferred()
        self._stopWaiters.append(d)
        if not self._stopping:
            self._stopping = True
            self._stop()
        return d

    def _stop(self):
        waits = []
        if self._listening is not None:
            listening, self._listening = self._listening, None
            waits.append(maybeDeferred(listening.stopListening))
        abortCall = None
        if self._connections:
            idle = Deferred()
            self._idleWaiters.append(idle)
            waits.append(idle)
            for connection in list(self._connections):
                connection.close()
            if self._connections:
                abortCall = self.reactor.callLater(self.closeTimeout, self._abortAll)

        def stopped(result):
            if abortCall is not None and abortCall.active():
                abortCall.cancel()
            if isinstance(result, Failure):
                self.log.failure("fault proxy on port {port} stopped badly", result, port=self.port)
            else:
                self.log.info("fault proxy on port {port} stopped", port=self.port)
            self._stopping = False
            waiters, self._stopWaiters = self._stopWaiters, []
            for d in waiters:
                d.callback(None)

        gatherResults(waits, consumeErrors=True).addBoth(stopped)

    def _abortAll(self):
        self.log.warn(
            "{count} connections did not close in {timeout}s; aborting",
            count=len(self._connections),
            timeout=self.closeTimeout,
        )
        for connection in list(self._connections):
            connection.abort()

    def setMode(self, mode, direction=None, **params):
        """
        Switch to C{mode} (one of L{MODES}) now, for existing and new
        connections.

        @param direction: C{"up"} (client to target), C{"down"} (target to
            client) or C{"both"}; by default C{"both"}, except for
            C{halfclose}, which closes the write side toward the client
            (C{"down"}). C{reset} applies to both directions only.
        @param params: C{seconds=S} for C{delay}.
        @raise ModeError: for an unknown mode, direction or parameter.
        """
        new = Mode.fromParameters(mode, params)
        for which in _directions(mode, direction):
            self._modes[which] = new
        self.log.info(
            "fault proxy mode: up {up}, down {down}",
            up=str(self._modes[UP]),
            down=str(self._modes[DOWN]),
        )
        for connection in list(self._connections):
            connection.modeChanged()

    def stats(self):
        """
        The counters and modes, as a C{dict}.
        """
        return {
            "connections": self.connections,
            "accepted": self.accepted,
            "bytesUp": self.bytesUp,
            "bytesDown": self.bytesDown,
            "bytesDropped": self.bytesDropped,
            "pauses": self.pauses,
            "up": str(self._modes[UP]),
            "down": str(self._modes[DOWN]),
        }

    def _resetting(self):
        return self._modes[UP].name == "reset" or self._modes[DOWN].name == "reset"

    def _accepted(self, client):
        self.accepted += 1
        connection = ProxiedConnection(self, client, self.accepted)
        self._connections.add(connection)
        self.log.debug(
            "connection #{number} from {peer}",
            number=connection.number,
            peer=client.transport.getPeer(),
        )
        if self._stopping:
            connection.abort()
            return
        connection.begin()

    def _connectionDone(self, connection):
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        self.log.debug("connection #{number} closed", number=connection.number)
        if not self._connections:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)


# -- remote control ---------------------------------------------------------

CONTROL_HELP = "commands: mode NAME [SECONDS] [up|down|both]; stats; help; quit"


def runCommand(proxy, line):
    """
    Run one control command on C{proxy}.

    @return: the one-line answer (C{"ok …"} or C{"error …"}) and whether
        the control connection should close.
    """
    words = line.split()
    if not words:
        return "error empty command (%s)" % (CONTROL_HELP,), False
    command, args = words[0].lower(), words[1:]
    if command == "mode":
        return _modeCommand(proxy, args), False
    if args and command in ("stats", "help", "quit"):
        return "error %s takes no arguments" % (command,), False
    if command == "stats":
        return "ok " + " ".join("%s=%s" % item for item in proxy.stats().items()), False
    if command == "help":
        return "ok " + CONTROL_HELP, False
    if command == "quit":
        return "ok bye", True
    return "error unknown command %r (%s)" % (words[0][:40], CONTROL_HELP), False


def _modeCommand(proxy, args):
    if not args:
        return "error mode needs a NAME (one of %s)" % (", ".join(MODES),)
    name, rest = args[0].lower(), args[1:]
    params = {}
    direction = None
    for word in rest:
        if word.lower() in (UP, DOWN, BOTH) and direction is None:
            direction = word.lower()
        elif name == "delay" and "seconds" not in params:
            params["seconds"] = word
        else:
            return "error unexpected argument %r to mode %s" % (word[:40], name)
    try:
        proxy.setMode(name, direction=direction, **params)
    except ModeError as e:
        return "error %s" % (e,)
    modes = proxy.modes
    return "ok mode up=%s down=%s" % (modes[UP], modes[DOWN])


class ControlProtocol(LineOnlyReceiver):
    """
    One control connection: a line in, a line out.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1024
    log = Logger()

    def connectionMade(self):
        self.factory.server._controls.add(self)

    def connectionLost(self, reason):
        self.factory.server._controlLost(self)

    def lineReceived(self, line):
        try:
            text = line.rstrip(b"\r").decode("ascii")
        except UnicodeDecodeError:
            self.answer("error commands are ASCII")
            return
        answer, close = runCommand(self.factory.server.proxy, text)
        self.log.info("control {command!r}: {answer}", command=text, answer=answer)
        self.answer(answer)
        if close:
            self.transport.loseConnection()

    def answer(self, text):
        self.sendLine(text.encode("ascii", "replace"))

    def lineLengthExceeded(self, line):
        self.answer("error line longer than %d bytes" % (self.MAX_LENGTH,))
        self.transport.loseConnection()


class _ControlFactory(Factory):
    noisy = False
    protocol = ControlProtocol

    def __init__(self, server):
        self.server = server


class ControlServer:
    """
    Line commands for a L{FaultProxy}, on 127.0.0.1 only: C{mode NAME
    [SECONDS] [up|down|both]}, C{stats}, C{help}, C{quit}. Each answers one
    line, C{ok …} or C{error …}.

    @ivar port: the listening port number once L{start} has fired.
    """

    log = Logger()
    interface = "127.0.0.1"

    def __init__(self, proxy, port=0, reactor=None):
        self.proxy = proxy
        self.reactor = reactor if reactor is not None else proxy.reactor
        self.listenPort = int(port)
        self.port = None
        self._listening = None
        self._controls = set()
        self._idleWaiters = []

    def start(self):
        """
        @return: a L{Deferred} firing with the listening port number.
        """
        if self._listening is not None:
            return succeed(self.port)
        d = maybeDeferred(
            self.reactor.listenTCP, self.listenPort, _ControlFactory(self), interface=self.interface
        )
        d.addCallback(self._started)
        return d

    def _started(self, listening):
        self._listening = listening
        self.port = listening.getHost().port
        self.log.info(
            "fault proxy control on {interface}:{port}", interface=self.interface, port=self.port
        )
        return self.port

    def stop(self):
        """
        Stop listening and close the control connections.

        @return: a L{Deferred} firing with C{None} once all are closed.
        """
        waits = []
        if self._listening is not None:
            listening, self._listening = self._listening, None
            waits.append(maybeDeferred(listening.stopListening))
        if self._controls:
            idle = Deferred()
            self._idleWaiters.append(idle)
            waits.append(idle)
            for control in list(self._controls):
                control.transport.abortConnection()
        d = gatherResults(waits, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    def _controlLost(self, control):
        self._controls.discard(control)
        if not self._controls:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)


# -- command line -----------------------------------------------------------


def _port(text, name, allowZero=True):
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise usage.UsageError("%s must be a port number, not %r" % (name, text)) from None
    lowest = 0 if allowZero else 1
    if not lowest <= port <= 65535:
        raise usage.UsageError(
            "%s must be a port number from %d to 65535, not %d" % (name, lowest, port)
        )
    return port


def parseTarget(text):
    """
    C{"HOST:PORT"} (or C{"[V6HOST]:PORT"}) as C{(host, port)}.

    @raise usage.UsageError: if it is not one.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise usage.UsageError("--target must be HOST:PORT, not %r" % (text,))
    return host, _port(port, "--target port", allowZero=False)


class Options(usage.Options):
    synopsis = (
        "Usage: python -m tvlink.testing.faultproxy --listen PORT --target HOST:PORT [--control PORT]"
    )
    longdesc = (
        "A TCP proxy that injects faults for tests and benchmarks. Prints one line, "
        "'faultproxy listen=PORT control=PORT target=HOST:PORT', once listening. "
        "The control port (127.0.0.1 only) takes line " + CONTROL_HELP + "."
    )
    optParameters = [
        ["listen", "l", None, "Port to accept clients on (0: any free port)."],
        ["target", "t", None, "HOST:PORT to forward to."],
        ["control", "c", None, "Port for line commands, on 127.0.0.1 (0: any free port)."],
        ["interface", "i", "127.0.0.1", "Address to accept clients on."],
    ]

    def postOptions(self):
        if self["listen"] is None:
            raise usage.UsageError("--listen PORT is required")
        if self["target"] is None:
            raise usage.UsageError("--target HOST:PORT is required")
        self["listen"] = _port(self["listen"], "--listen")
        self["target"] = parseTarget(self["target"])
        if self["control"] is not None:
            self["control"] = _port(self["control"], "--control")


def main(argv=None, reactor=None, out=None, err=None):
    """
    Run a proxy until the process is interrupted.

    @return: the exit status: 0, 1 if it could not start, 2 for bad
        arguments.
    """
    argv = sys.argv[1:] if argv is None else argv
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        err.write("%s\nfaultproxy: error: %s\n" % (options, e))
        return 2

    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(err)], redirectStandardIO=False)
    reactor = reactor if reactor is not None else _globalReactor()
    host, targetPort = options["target"]
    proxy = FaultProxy(
        host, targetPort, reactor, listen_port=options["listen"], interface=options["interface"]
    )
    control = ControlServer(proxy, options["control"]) if options["control"] is not None else None
    status = []

    def begin():
        d = proxy.start()
        if control is not None:
            d.addCallback(lambda _: control.start())
        d.addCallbacks(announce, failed)

    def announce(_):
        out.write(
            "faultproxy listen=%d control=%s target=%s:%d\n"
            % (proxy.port, control.port if control is not None else "-", host, targetPort)
        )
        out.flush()

    def failed(failure):
        FaultProxy.log.failure("fault proxy could not start", failure)
        status.append(1)
        reactor.stop()

    def shutdown():
        waits = [proxy.stop()]
        if control is not None:
            waits.append(control.stop())
        return gatherResults(waits, consumeErrors=True)

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.callWhenRunning(begin)
    reactor.run()
    return status[0] if status else 0


if __name__ == "__main__":
    sys.exit(main())
