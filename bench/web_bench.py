#!/usr/bin/env python
"""
The terminal API under load, against the bare twisted.web floor.

Three child processes on 127.0.0.1:

    - a payment node: C{twistd tvlink payment} (the demo account handler,
      answering at once);
    - a platform: C{twistd tvlink platform --http ... --journal ...}
      linked to it, serving the terminal API;
    - the floor: this script with C{--serve-floor}, a twisted.web L{Site}
      whose one resource answers a fixed JSON body at once.

This process is the load: C{--concurrency} keep-alive HTTP/1.1
connections, each sending its next request as soon as the last is
answered, with a minimal client (no Agent) so the client costs little and
the same for every target. Phases, each after a warm-up:

    - C{floor}: C{POST /} on the floor;
    - C{balance}: C{POST /v1/balance} through the platform into the
      payment node (not journalled);
    - C{purchase}: C{POST /v1/payments}, each a new order (journalled
      twice: before it is sent and when it is answered, with group
      commit), through the platform into the payment node.

It prints requests per second, p50 and p99 latency for each, and the
ratios to the floor. Bounded: C{--requests} per phase, C{--seconds} per
phase, C{--wall} for the whole run; children are stopped on every exit
path. Run from the repository root::

    python bench/web_bench.py            # 4000 requests a phase, 16 connections
    python bench/web_bench.py --quick    # a few seconds
"""

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]
FLOOR_BODY = json.dumps(
    {"order": "floor", "type": "purchase", "state": "approved", "resp": "00", "message": "approved",
     "amount": 1, "currency": "156", "card": "622202*********0001", "reference": "PLATFORM/000001/0101000000"}
).encode("utf-8")


def parseArgs(argv):
    p = argparse.ArgumentParser(description="tvlink terminal API throughput and latency against the bare twisted.web floor")
    p.add_argument("--requests", type=int, default=4000, help="measured requests per phase (4000)")
    p.add_argument("--warmup", type=int, default=400, help="warm-up requests per phase (400)")
    p.add_argument("--concurrency", type=int, default=16, help="keep-alive connections, one request each in flight (16)")
    p.add_argument("--seconds", type=float, default=40.0, help="time limit of one phase (40)")
    p.add_argument("--wall", type=float, default=240.0, help="hard cap on the whole run (240)")
    p.add_argument("--quick", action="store_true", help="1000 requests a phase, 100 warm-up")
    p.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.warmup = 1000, 100
    return args


# -- the floor -------------------------------------------------------------


def serveFloor(reactor):
    """
    The child: a Site whose one resource answers at once.
    """
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Answer(Resource):
        isLeaf = True

        def render_POST(self, request):
            request.content.read()
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            return FLOOR_BODY

        render_GET = render_POST

    class QuietSite(Site):
        def log(self, request):
            pass

    port = reactor.listenTCP(0, QuietSite(Answer()), interface=HOST)
    sys.stdout.write("floor listening on %s:%d\n" % (HOST, port.getHost().port))
    sys.stdout.flush()
    reactor.addReader(_StdinWatch(reactor))
    return defer.Deferred()


class _StdinWatch:
    """
    Stops the floor when its parent closes our standard input.
    """

    def __init__(self, reactor):
        self.reactor = reactor

    def fileno(self):
        return 0

    def doRead(self):
        if not os.read(0, 4096):
            self.reactor.stop()

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "stdin"


# -- children --------------------------------------------------------------


class Child(protocol.ProcessProtocol):
    """
    A child process whose output lines are kept and can be waited for.
    """

    def __init__(self, name):
        self.name = name
        self.lines = []
        self.buffer = b""
        self.waiters = []
        self.ended = defer.Deferred()
        self.running = False

    def connectionMade(self):
        self.running = True

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            for waiter in list(self.waiters):
                regex, d = waiter
                m = regex.search(line)
                if m:
                    self.waiters.remove(waiter)
                    d.callback(m)

    errReceived = outReceived

    def processEnded(self, reason):
        self.running = False
        for regex, d in self.waiters:
            d.errback(RuntimeError("%s ended before printing /%s/:\n%s" % (self.name, regex.pattern, "\n".join(self.lines[-20:]))))
        self.waiters = []
        self.ended.callback(None)

    def waitFor(self, pattern, reactor, seconds=20.0):
        regex = re.compile(pattern)
        for line in self.lines:
            m = regex.search(line)
            if m:
                return defer.succeed(m)
        d = defer.Deferred()
        waiter = (regex, d)
        self.waiters.append(waiter)

        def expire():
            if waiter in self.waiters:
                self.waiters.remove(waiter)
                d.errback(RuntimeError("%s printed no /%s/ in %gs:\n%s" % (self.name, pattern, seconds, "\n".join(self.lines[-20:]))))

        call = reactor.callLater(seconds, expire)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    @defer.inlineCallbacks
    def stop(self, reactor):
        if not self.running:
            return
        for sig, grace in (("TERM", 10.0), ("KILL", 5.0)):
            try:
                self.transport.signalProcess(sig)
            except Exception:
                pass
            timer = reactor.callLater(grace, lambda: None)
            done = defer.DeferredList([self.ended, task.deferLater(reactor, grace, lambda: None)], fireOnOneCallback=True)
            yield done
            if timer.active():
                timer.cancel()
            if not self.running:
                return


def spawn(reactor, name, argv, cwd):
    child = Child(name)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    reactor.spawnProcess(child, argv[0], argv, env=env, path=cwd, childFDs={0: "w", 1: "r", 2: "r"})
    return child


# -- load ------------------------------------------------------------------


class KeepAlive(protocol.Protocol):
    """
    One HTTP/1.1 keep-alive connection sending requests one at a time.
    Answers must carry Content-Length.
    """

    def __init__(self):
        self.buffer = b""
        self.waiting = None
        self.need = None
        self.code = None

    def send(self, method, path, body):
        head = (
            "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (method, path, HOST, len(body))
        ).encode("ascii")
        self.waiting = defer.Deferred()
        self.transport.write(head + body)
        return self.waiting

    def dataReceived(self, data):
        self.buffer += data
        while self.waiting is not None:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
                lines = head.split(b"\r\n")
                self.code = int(lines[0].split()[1])
                length = None
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if length is None:
                    raise RuntimeError("answer without Content-Length: %r" % (head,))
                self.need = length
            if len(self.buffer) < self.need:
                return
            body, self.buffer = self.buffer[:self.need], self.buffer[self.need:]
            self.need = None
            d, self.waiting = self.waiting, None
            d.callback((self.code, body))

    def connectionLost(self, reason):
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.errback(reason)


def percentile(ordered, p):
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[index]


@defer.inlineCallbacks
def runPhase(reactor, port, makeRequest, count, concurrency, seconds, check):
    """
    C{count} requests over C{concurrency} connections to C{port}.

    @return: C{(answered, errors, elapsed, latencies)}.
    """
    connections = []
    for _ in range(concurrency):
        endpoint = TCP4ClientEndpoint(reactor, HOST, port, timeout=5)
        connections.append((yield connectProtocol(endpoint, KeepAlive())))
    latencies = []
    errors = [0]
    issued = [0]
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    @defer.inlineCallbacks
    def worker(connection):
        while issued[0] < count and time.perf_counter() < deadline:
            index = issued[0]
            issued[0] += 1
            method, path, body = makeRequest(index)
            sent = time.perf_counter()
            code, answer = yield connection.send(method, path, body)
            latencies.append(time.perf_counter() - sent)
            if not check(code, answer):
                errors[0] += 1

    yield defer.gatherResults([worker(c) for c in connections], consumeErrors=True)
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.transport.loseConnection()
    return len(latencies), errors[0], elapsed, sorted(latencies)


def card(index):
    return "6222020%012d" % (index % 500,)


@defer.inlineCallbacks
def main(reactor, args):
    if args.serve_floor:
        yield serveFloor(reactor)
        return
    work = tempfile.mkdtemp(prefix="tvlink-webbench-")
    children = []
    wall = reactor.callLater(args.wall, lambda: [c.transport.signalProcess("KILL") for c in children if c.running])
    try:
        payment = spawn(reactor, "payment", TWISTD + ["-n", "--pidfile=", "tvlink", "payment", "--listen", "tcp:0:interface=%s" % HOST, "--ledger", "memory"], work)
        children.append(payment)
        floor = spawn(reactor, "floor", [sys.executable, os.path.abspath(__file__), "--serve-floor"], work)
        children.append(floor)
        paymentPort = int((yield payment.waitFor(r"payment listening on 127\.0\.0\.1:(\d+)", reactor)).group(1))
        floorPort = int((yield floor.waitFor(r"floor listening on 127\.0\.0\.1:(\d+)", reactor)).group(1))
        platform = spawn(
            reactor,
            "platform",
            TWISTD + ["-n", "--pidfile=", "tvlink", "platform", "--connect", "%s:%d" % (HOST, paymentPort),
                      "--http", "tcp:0:interface=%s" % HOST, "--journal", "sqlite:" + os.path.join(work, "journal.db")],
            work,
        )
        children.append(platform)
        webPort = int((yield platform.waitFor(r"web listening on http://127\.0\.0\.1:(\d+)/", reactor)).group(1))
        yield platform.waitFor(r"link 127\.0\.0\.1:%d ready \(platform\)" % (paymentPort,), reactor)

        run = "%d" % (os.getpid(),)

        def floorRequest(i):
            return "POST", "/", b'{"card": "6222020000000000001", "amount": 1, "order": "f"}'

        def balanceRequest(i):
            return "POST", "/v1/balance", json.dumps({"card": card(i)}).encode()

        def purchaseRequest(prefix):
            def make(i):
                return "POST", "/v1/payments", json.dumps({"card": card(i), "amount": 1, "order": "%s-%s-%d" % (run, prefix, i)}).encode()

            return make

        def ok(code, body):
            return code == 200 and b'"approved"' in body

        phases = [
            ("floor", floorPort, floorRequest, floorRequest),
            ("balance", webPort, balanceRequest, balanceRequest),
            ("purchase", webPort, purchaseRequest("w"), purchaseRequest("m")),
        ]
        results = {}
        print("tvlink web bench: %d requests a phase (after %d warm-up), %d connections, 127.0.0.1"
              % (args.requests, args.warmup, args.concurrency))
        print("%-10s %9s %7s %8s %9s %8s %8s %8s" % ("phase", "requests", "errors", "seconds", "req/s", "p50 ms", "p99 ms", "max ms"))
        for name, port, warm, measured in phases:
            yield runPhase(reactor, port, warm, args.warmup, args.concurrency, args.seconds, ok)
            answered, errors, elapsed, lat = yield runPhase(reactor, port, measured, args.requests, args.concurrency, args.seconds, ok)
            rps = answered / elapsed if elapsed else 0.0
            results[name] = (rps, percentile(lat, 50), percentile(lat, 99))
            print("%-10s %9d %7d %8.2f %9.0f %8.2f %8.2f %8.2f" % (
                name, answered, errors, elapsed, rps, percentile(lat, 50) * 1000, percentile(lat, 99) * 1000,
                (lat[-1] if lat else 0) * 1000))
        floorRps, floorP50, floorP99 = results["floor"]
        print()
        for name in ("balance", "purchase"):
            rps, p50, p99 = results[name]
            print("%-8s / floor: req/s %.3f (%.0f vs %.0f), p99 %.1fx (%.2f ms vs %.2f ms)" % (
                name, rps / floorRps, rps, floorRps, p99 / floorP99, p99 * 1000, floorP99 * 1000))
    finally:
        if wall.active():
            wall.cancel()
        for child in children:
            if child is not None and child.running and child.name == "floor":
                child.transport.closeStdin()
        for child in reversed(children):
            yield child.stop(reactor)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    arguments = parseArgs(sys.argv[1:])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    task.react(main, [arguments])
