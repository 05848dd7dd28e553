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

L{tvlink.testing.modes} names the modes and L{tvlink.testing.pipe}
carries the bytes; L{tvlink.testing.control} lets another process drive a
proxy with line commands, and C{python -m tvlink.testing.faultproxy
--help} runs one from the command line.
"""

import sys

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import NotConnectingError
from twisted.logger import Logger
from twisted.python.failure import Failure

from tvlink.link.settings import globalReactor
from tvlink.testing.modes import DOWN, UP, Mode, affectedDirections
from tvlink.testing.pipe import ClientSideFactory, Pipe, TargetSideFactory

__all__ = ["FaultProxy", "ProxiedConnection"]


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
        self.up = Pipe(self, UP)
        self.down = Pipe(self, DOWN)

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
        if self.proxy.modeOf(UP).name != "blackhole":
            self.connect()

    def connect(self):
        proxy = self.proxy
        self.state = "connecting"
        self.up.holdSource("connecting")
        self.connector = proxy.reactor.connectTCP(
            proxy.targetHost,
            proxy.targetPort,
            TargetSideFactory(self),
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
        self.up.releaseSource("connecting")
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
            and self.proxy.modeOf(UP).name != "blackhole"
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
        self.reactor = reactor if reactor is not None else globalReactor()
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

    def modeOf(self, direction):
        """
        The current L{Mode} of C{direction}, C{"up"} or C{"down"}.
        """
        return self._modes[direction]

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
            ClientSideFactory(self._accepted),
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
        Switch to C{mode} (one of L{tvlink.testing.modes.MODES}) now, for existing and new
        connections.

        @param direction: C{"up"} (client to target), C{"down"} (target to
            client) or C{"both"}; by default C{"both"}, except for
            C{halfclose}, which closes the write side toward the client
            (C{"down"}). C{reset} applies to both directions only.
        @param params: C{seconds=S} for C{delay}.
        @raise tvlink.testing.modes.ModeError: for an unknown mode, direction
            or parameter.
        """
        new = Mode.fromParameters(mode, params)
        for which in affectedDirections(mode, direction):
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


if __name__ == "__main__":
    # The command line lives with the control port, which imports this
    # module: import it only when run as a program.
    from tvlink.testing.control import main

    sys.exit(main())
