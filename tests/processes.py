"""
Helpers for the integration tests: real twistd children on loopback, a raw
ascii4 TCP client, and bounded waits on the real reactor (no sleeping).
"""

import json
import os
import re
import shutil
import sys
import tempfile

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

#: The checkout under test; children import tvlink and its plugin from here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: twistd as a child of this interpreter. C{python -m twisted.scripts.twistd}
#: does nothing (that module has no C{__main__} guard), so call C{run()}.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]


def getReactor():
    from twisted.internet import reactor

    return reactor


class WaitTimeout(Exception):
    """
    Something awaited did not happen before its deadline.
    """


class ProcessGone(Exception):
    """
    A child ended while we were waiting for it to say something.
    """


def withDeadline(d, seconds, what):
    """
    Fail C{d} with L{WaitTimeout} naming C{what} unless it fires within
    C{seconds}; C{d} is then cancelled.
    """
    result = defer.Deferred()

    def expire():
        result.errback(WaitTimeout("%s: nothing after %.1fs" % (what, seconds)))
        d.cancel()

    call = getReactor().callLater(seconds, expire)

    def fired(value):
        if call.active():
            call.cancel()
        if not result.called:
            if isinstance(value, Failure):
                result.errback(value)
            else:
                result.callback(value)
        # After the deadline, whatever d ends with (its cancellation) is
        # already reported as the WaitTimeout.

    d.addBoth(fired)
    return result


def waitUntil(predicate, seconds, what, interval=0.05):
    """
    Poll C{predicate} on the reactor until it returns true (fire with its
    value) or C{seconds} pass (fail with L{WaitTimeout}).
    """
    reactor = getReactor()
    deadline = reactor.seconds() + seconds

    @defer.inlineCallbacks
    def poll():
        while True:
            value = predicate()
            if value:
                return value
            if reactor.seconds() >= deadline:
                raise WaitTimeout("%s: still false after %.1fs" % (what, seconds))
            yield task.deferLater(reactor, interval, lambda: None)

    return poll()


def pause(seconds):
    """
    A L{Deferred} firing after C{seconds} of reactor time.
    """
    return task.deferLater(getReactor(), seconds, lambda: None)


class LineMatch:
    """
    A regular-expression match in a child's output, and where it was.

    @ivar line: the whole line.
    @ivar index: the line's index in L{TwistdProcess.lines}.
    """

    def __init__(self, match, index):
        self.match = match
        self.line = match.string
        self.index = index

    def group(self, *which):
        return self.match.group(*which)


class TwistdProcess(protocol.ProcessProtocol):
    """
    One child process whose output is kept line by line and can be waited
    on with a deadline.

    @ivar lines: every line the child wrote, stdout and stderr interleaved
        as they arrived.
    @ivar status: the exit code, or C{-signal} when killed; C{None} while
        running.
    """

    def __init__(self, name):
        self.name = name
        self.lines = []
        self.stdout = []
        self.stderr = []
        self._partial = {1: b"", 2: b""}
        self._waiters = []
        self._ended = []
        self.status = None
        self.running = False
        self.transport = None

    # -- process protocol ----------------------------------------------

    def connectionMade(self):
        self.running = True

    def childDataReceived(self, fd, data):
        if fd not in self._partial:
            return
        buf = self._partial[fd] + data
        *complete, self._partial[fd] = buf.split(b"\n")
        for raw in complete:
            self._line(fd, raw.decode("utf-8", "replace").rstrip("\r"))

    def _line(self, fd, line):
        (self.stdout if fd == 1 else self.stderr).append(line)
        self.lines.append(line)
        index = len(self.lines) - 1
        for waiter in list(self._waiters):
            regex, start, d = waiter
            if index >= start:
                match = regex.search(line)
                if match is not None:
                    self._waiters.remove(waiter)
                    d.callback(LineMatch(match, index))

    def processEnded(self, reason):
        for fd, rest in self._partial.items():
            if rest:
                self._line(fd, rest.decode("utf-8", "replace"))
        self._partial = {1: b"", 2: b""}
        self.running = False
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        self.status = -sig if code is None and sig is not None else code
        waiters, self._waiters = self._waiters, []
        for regex, start, d in waiters:
            d.errback(
                ProcessGone(
                    "%s ended (status %s) before printing /%s/\n%s"
                    % (self.name, self.status, regex.pattern, self.tail())
                )
            )
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(self.status)

    # -- waiting ---------------------------------------------------------

    def mark(self):
        """
        The index of the next line: pass it as C{after} to wait only for
        what comes later.
        """
        return len(self.lines)

    def tail(self, n=40):
        return "\n".join("    | " + line for line in self.lines[-n:])

    def find(self, pattern, after=0):
        """
        Every match of C{pattern} in the lines from index C{after} on.
        """
        regex = re.compile(pattern)
        return [m for m in (regex.search(line) for line in self.lines[after:]) if m]

    def waitFor(self, pattern, seconds=10.0, after=0):
        """
        Fire with a L{LineMatch} for the first line at index C{after} or
        later where C{pattern} is found; fail
        with L{WaitTimeout} after C{seconds}, or L{ProcessGone} if the
        child ends first.
        """
        regex = re.compile(pattern)
        for index in range(after, len(self.lines)):
            match = regex.search(self.lines[index])
            if match is not None:
                return defer.succeed(LineMatch(match, index))
        if not self.running and self.status is not None:
            return defer.fail(
                ProcessGone("%s already ended (status %s)\n%s" % (self.name, self.status, self.tail()))
            )
        d = defer.Deferred()
        waiter = (regex, after, d)
        self._waiters.append(waiter)

        def timedOut():
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                d.errback(
                    WaitTimeout(
                        "%s printed no /%s/ within %.1fs; its output:\n%s"
                        % (self.name, pattern, seconds, self.tail())
                    )
                )

        call = getReactor().callLater(seconds, timedOut)
        d.addBoth(lambda result: (call.active() and call.cancel(), result)[1])
        return d

    def whenEnded(self, seconds=10.0):
        """
        Fire with the exit status once the child has ended; fail with
        L{WaitTimeout} after C{seconds}.
        """
        if self.status is not None and not self.running:
            return defer.succeed(self.status)
        d = defer.Deferred(lambda d: self._ended.remove(d))
        self._ended.append(d)
        return withDeadline(d, seconds, "%s to exit" % (self.name,))

    def signal(self, name):
        if self.running:
            try:
                self.transport.signalProcess(name)
            except Exception:
                pass

    @defer.inlineCallbacks
    def stop(self, grace=5.0):
        """
        End the child: SIGTERM, then SIGKILL if it lingers. Always bounded.
        """
        if not self.running:
            return self.status
        self.signal("TERM")
        try:
            status = yield self.whenEnded(grace)
        except WaitTimeout:
            self.signal("KILL")
            status = yield self.whenEnded(grace)
        return status


def spawnPython(testCase, argv, name, cwd=None):
    """
    Start this interpreter with C{argv} (its arguments) as a child
    process, with the checkout first on its path, kept until the test's
    cleanup stops it.

    @return: the L{TwistdProcess}.
    """
    if cwd is None:
        # Not testCase.mktemp(): under pytest that is relative to the
        # checkout and would litter it.
        cwd = tempfile.mkdtemp(prefix="tvlink-it-")
        testCase.addCleanup(shutil.rmtree, cwd, True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    child = TwistdProcess(name)
    getReactor().spawnProcess(child, sys.executable, [sys.executable] + list(argv), env=env, path=cwd)
    testCase.addCleanup(child.stop)
    return child


def spawnTwistd(testCase, *args, name=None, cwd=None):
    """
    Start C{twistd -n --pidfile= tvlink ARGS...} as a child process, kept
    until the test's cleanup stops it.

    @return: the L{TwistdProcess}.
    """
    argv = TWISTD[1:] + ["-n", "--pidfile=", "tvlink"] + [str(a) for a in args]
    return spawnPython(testCase, argv, name or " ".join(map(str, args[:1])) or "twistd", cwd=cwd)


@defer.inlineCallbacks
def runTwistd(testCase, *args, seconds=15.0):
    """
    Run a twistd command that is expected to exit by itself.

    @return: a L{Deferred} firing with the L{TwistdProcess} once it has
        ended (its C{status}, C{stdout}, C{stderr} filled in).
    """
    child = spawnTwistd(testCase, *args, name="twistd tvlink " + " ".join(map(str, args)))
    try:
        yield child.whenEnded(seconds)
    except WaitTimeout:
        raise WaitTimeout("%s still running after %.1fs\n%s" % (child.name, seconds, child.tail()))
    return child


@defer.inlineCallbacks
def startPayment(testCase, *args, port=0, name="payment", seconds=10.0):
    """
    Start a payment child on 127.0.0.1 (C{port} 0: the OS picks one) and
    wait until it listens.

    @return: a L{Deferred} firing with C{(process, port)}.
    """
    if "--ledger" not in args:
        # The in-memory demo ledger (every card good for 1000.00), unless
        # the test names a ledger.
        args = ("--ledger", "memory") + args
    child = spawnTwistd(
        testCase, "payment", "--listen", "tcp:%d:interface=127.0.0.1" % (port,), *args, name=name
    )
    match = yield child.waitFor(r"payment listening on 127\.0\.0\.1:(\d+)", seconds)
    return child, int(match.group(1))


class RawClient(protocol.Protocol):
    """
    A bare ascii4 peer with no tvlink code in it: sends what it is told,
    splits what it gets into frame bodies.

    @ivar frames: every body received (C{b""} for an idle query).
    @ivar peerPort: our own port, as the server sees (and logs) us.
    """

    def __init__(self):
        self.frames = []
        self._buffer = b""
        self._frameWaiters = []
        self._lostWaiters = []
        self.lost = False
        self.lostAt = None
        self.connectedAt = None

    def connectionMade(self):
        self.connectedAt = getReactor().seconds()
        self.peerPort = self.transport.getHost().port

    def dataReceived(self, data):
        self._buffer += data
        while len(self._buffer) >= 4:
            header = self._buffer[:4]
            if not header.isdigit():
                raise ValueError("peer sent a non-ascii4 header %r" % (header,))
            length = int(header)
            if len(self._buffer) < 4 + length:
                break
            body, self._buffer = self._buffer[4 : 4 + length], self._buffer[4 + length :]
            self.frames.append(body)
            waiters, self._frameWaiters = self._frameWaiters, []
            for d in waiters:
                d.callback(None)

    def connectionLost(self, reason):
        self.lost = True
        self.lostAt = getReactor().seconds()
        waiters, self._frameWaiters = self._frameWaiters, []
        for d in waiters:
            d.callback(None)
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)

    def sendRaw(self, data):
        self.transport.write(data)

    def sendFrame(self, body):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.transport.write(b"%04d" % (len(body),) + body)

    def sendMessage(self, message):
        self.sendFrame(json.dumps(message, separators=(",", ":")))

    def whenLost(self, seconds, what="the connection to close"):
        if self.lost:
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._lostWaiters.remove(d))
        self._lostWaiters.append(d)
        return withDeadline(d, seconds, what)

    @defer.inlineCallbacks
    def nextFrame(self, seconds=5.0, skipIdle=True):
        """
        Fire with the next body received (skipping idle queries unless
        told not to); fail with L{WaitTimeout} after C{seconds}, or with
        C{ConnectionError} if the connection closes first.
        """
        while True:
            if self.frames:
                body = self.frames.pop(0)
                if skipIdle and body == b"":
                    continue
                return body
            if self.lost:
                raise ConnectionError("connection closed while waiting for a frame")
            d = defer.Deferred(lambda d: self._frameWaiters.remove(d))
            self._frameWaiters.append(d)
            yield withDeadline(d, seconds, "a frame from the peer")

    @defer.inlineCallbacks
    def nextMessage(self, seconds=5.0):
        body = yield self.nextFrame(seconds)
        return json.loads(body.decode("utf-8"))

    def close(self):
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()


@defer.inlineCallbacks
def connectRaw(testCase, port, seconds=5.0):
    """
    Connect a L{RawClient} to 127.0.0.1:C{port}; aborted in cleanup.
    """
    client = RawClient()
    endpoint = TCP4ClientEndpoint(getReactor(), "127.0.0.1", port, timeout=seconds)
    yield withDeadline(connectProtocol(endpoint, client), seconds, "connect to 127.0.0.1:%d" % (port,))

    def cleanup():
        client.close()
        return client.whenLost(5.0)

    testCase.addCleanup(cleanup)
    return client


class ReactorTestCase(unittest.TestCase):
    """
    A trial TestCase on the real reactor, under trial and under pytest.

    Trial runs each test by starting and stopping the global reactor
    itself, under pytest as well (pytest-twisted installs the reactor and
    leaves a trial TestCase to trial). This suite therefore has no
    pytest-twisted style tests (C{pytest_twisted.inlineCallbacks}): one of
    those runs the reactor in pytest-twisted's greenlet for the rest of the
    session, and trial could not start it again.
    """

    timeout = 30
