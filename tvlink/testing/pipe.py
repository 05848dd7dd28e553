"""
The byte pipe of L{tvlink.testing.faultproxy}: the two protocol sides of
one proxied connection and the pipe that carries each direction between
them, treating the bytes as that direction's mode says.

Each L{Pipe} reads from one L{Endpoint} (its source) and writes to the
other (its sink). It is the streaming producer of its sink's transport, so
a full send buffer pauses the source; a delay queue past the proxy's
C{highWater} bytes pauses it too. An endpoint can be paused for several
reasons at once and reads again once every reason is released.

The pipe asks its connection for the rest: C{connection.client} and
C{connection.target} (the two endpoints, the target C{None} until it is
connected) and C{connection.proxy}, which gives the clock
(C{proxy.reactor}), the queue limit (C{proxy.highWater}), the mode of
each direction (C{proxy.modeOf(direction)}) and the counters it adds to
(C{bytesUp}, C{bytesDown}, C{bytesDropped}, C{pauses}).

The modes themselves are in L{tvlink.testing.modes}.
"""

from collections import deque

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from tvlink.testing.modes import UP

__all__ = [
    "ClientSide",
    "ClientSideFactory",
    "Endpoint",
    "Pipe",
    "TargetSide",
    "TargetSideFactory",
]

# Modes that carry bytes to the other side, and modes that carry a close
# (FIN, or the end of the connection) to the other side.
_FORWARDING = ("pass", "delay")
_CLOSE_FORWARDING = ("pass", "delay", "drop")


@implementer(IHalfCloseableProtocol)
class Endpoint(Protocol):
    """
    One side of a proxied connection: the client's connection to the
    proxy, or the proxy's connection to the target. It hands what it hears
    to its connection (C{received(side, data)}, C{readLost(side)},
    C{sideLost(side, reason)}), and can be paused for several reasons at
    once.
    """

    readClosed = False
    writeClosed = False
    lost = False
    lostCleanly = False
    producer = None

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

    def registerProducer(self, producer):
        """
        Let C{producer} (the pipe writing here) be paused by this side's
        send buffer.
        """
        self.producer = producer
        self.transport.registerProducer(producer, True)

    def unregisterProducer(self):
        """
        Forget the producer, if one is registered: a transport closes only
        once its producer is gone.
        """
        if self.producer is not None:
            self.producer = None
            if not self.lost:
                self.transport.unregisterProducer()

    def closeWrite(self):
        """
        Send FIN: close the write side, keep reading.
        """
        if self.lost or self.writeClosed:
            return
        self.writeClosed = True
        self.unregisterProducer()
        self.transport.loseWriteConnection()

    def close(self):
        """
        Close both sides once what is already written is sent.
        """
        if not self.lost:
            self.unregisterProducer()
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


class ClientSide(Endpoint):
    """
    A client's connection to the proxy; its connection is set by whoever
    accepts it.
    """

    def connectionMade(self):
        self.factory.accepted(self)


class TargetSide(Endpoint):
    """
    The proxy's connection to the target, for one client: it tells its
    connection C{targetConnected(side)} once connected.
    """

    def connectionMade(self):
        self.connection.targetConnected(self)


class ClientSideFactory(Factory):
    """
    Builds a L{ClientSide} for each client, and gives it to C{accepted}
    once it is connected.
    """

    noisy = False

    def __init__(self, accepted):
        self.accepted = accepted

    def buildProtocol(self, addr):
        side = ClientSide()
        side.factory = self
        return side


class TargetSideFactory(ClientFactory):
    """
    Builds the L{TargetSide} of C{connection}, and tells it
    C{connectFailed(reason)} if the target cannot be reached.
    """

    noisy = False

    def __init__(self, connection):
        self.connection = connection

    def buildProtocol(self, addr):
        return TargetSide(self.connection)

    def clientConnectionFailed(self, connector, reason):
        self.connection.connectFailed(reason)


@implementer(IPushProducer)
class Pipe:
    """
    One direction of a proxied connection: bytes read from C{source},
    treated as the proxy's mode for this direction says, written to
    C{sink}.

    The pipe is the streaming producer registered on the sink's transport,
    so a full send buffer pauses the source; its delay queue pauses the
    source past the proxy's C{highWater} bytes too. What it needs of
    C{connection} is in the module docstring.

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
        return self.proxy.modeOf(self.direction)

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
            self.holdSource("queue-full")
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
            self.releaseSource("queue-full")

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
        self.releaseSource("queue-full")

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
            self.sink.registerProducer(self)

    def _unregister(self):
        if self._registered:
            self._registered = False
            sink = self.sink
            if sink is not None:
                sink.unregisterProducer()
        self.releaseSource("sink-full")

    def holdSource(self, reason):
        source = self.source
        if source is not None and reason not in source.held:
            if reason != "connecting":
                self.proxy.pauses += 1
            source.hold(reason)

    def releaseSource(self, reason):
        source = self.source
        if source is not None:
            source.release(reason)

    def pauseProducing(self):
        self.holdSource("sink-full")

    def resumeProducing(self):
        self.releaseSource("sink-full")

    def stopProducing(self):
        self._registered = False
        self.releaseSource("sink-full")

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
        self.releaseSource("sink-full")

    def shutdown(self):
        """
        Forget queued bytes and the sink, ready for a close.
        """
        self._discard()
        self._unregister()
        self.finished = True
