"""
The control port and the command line of L{tvlink.testing.faultproxy}.

A L{ControlServer} lets another process drive a L{FaultProxy} with line
commands on 127.0.0.1; L{main} runs a proxy (and optionally its control
port) until the process is interrupted. C{python -m
tvlink.testing.faultproxy --help} runs L{main}.
"""

import sys

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage

from tvlink.testing.faultproxy import FaultProxy
from tvlink.testing.modes import BOTH, DOWN, MODES, UP, ModeError

__all__ = [
    "CONTROL_HELP",
    "ControlProtocol",
    "ControlServer",
    "Options",
    "main",
    "parseTarget",
    "runCommand",
]

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
        self.factory.server.controlMade(self)

    def connectionLost(self, reason):
        self.factory.server.controlLost(self)

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

    def controlMade(self, control):
        """
        Note the control connection C{control} (closed by L{stop}).
        """
        self._controls.add(control)

    def controlLost(self, control):
        """
        Forget C{control}; once none is left, fire L{stop}'s waiters.
        """
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
    host, targetPort = options["target"]
    proxy = FaultProxy(
        host, targetPort, reactor, listen_port=options["listen"], interface=options["interface"]
    )
    reactor = proxy.reactor
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
