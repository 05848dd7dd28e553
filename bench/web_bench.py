#!/usr/bin/env python
"""
The terminal API under load, against the bare twisted.web floor.

Three child processes on 127.0.0.1:

    - a payment node: C{twistd tvlink payment} (the demo account handler,
      answering at once; C{--ledger sqlite} for the durable ledger);
    - a platform: C{twistd tvlink platform --http ... --journal ...}
      linked to it, serving the terminal API;
    - the floor: this script with C{--serve-floor}, a twisted.web L{Site}
      whose one resource answers a fixed JSON body at once.

The load is what terminals do: C{--connections} keep-alive HTTP/1.1
connections (16, 256 and 1,024 by default), each sending its next request
as soon as the last is answered, with a minimal client (no Agent) so the
client costs little and the same for every target. With
C{--load-processes N} the load runs in N processes of its own (this script
with C{--load-child}), not in this one, so that a load generator short of
CPU is not taken for a slow server; they connect first, then start
together, and the phase lasts from the first request any of them sends to
the last answer any of them gets. Phases, for each number of
connections, each after a warm-up:

    - C{floor}: C{POST /} on the floor;
    - C{balance}: C{POST /v1/balance} through the platform into the
      payment node (not journalled);
    - C{purchase}: C{POST /v1/payments}, each a new order (journalled
      twice: before it is sent and when it is answered, with group
      commit);
    - C{mix}: what a fleet sends: 60% new purchases, 20% repeats of an
      order already paid (answered from the journal, nothing charged) and
      20% balance inquiries.

It prints requests per second and the latency a terminal sees (p50, p99,
max) for each, with the ratios to the floor of the same number of
connections, and the serving processes' CPU per answer (from C{/proc}). Bounded: C{--requests} per phase, C{--seconds} per phase,
C{--wall} for the whole run; children are stopped on every exit path. Run
from the repository root::

    python bench/web_bench.py                    # 4000 requests a phase; 16, 256, 1024 connections
    python bench/web_bench.py --quick            # a few seconds a phase
    python bench/web_bench.py --load-processes 2 --connections 256
"""

import argparse
import gc
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
    p.add_argument(
        "--connections", default="16,256,1024",
        help="keep-alive connections, one request each in flight; a comma-separated list runs each (16,256,1024)",
    )
    p.add_argument("--concurrency", type=int, default=None, help="the same as --connections N (one count)")
    p.add_argument("--phases", default="floor,balance,purchase,mix", help="which phases (floor,balance,purchase,mix)")
    p.add_argument("--load-processes", type=int, default=1, help="processes generating the load (1: this one)")
    p.add_argument("--ledger", choices=("memory", "sqlite"), default="memory", help="the payment node's ledger (memory)")
    p.add_argument("--seconds", type=float, default=40.0, help="time limit of one phase (40)")
    p.add_argument("--wall", type=float, default=600.0, help="hard cap on the whole run (600)")
    p.add_argument("--quick", action="store_true", help="1000 requests a phase, 100 warm-up")
    p.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--load-child", nargs=6, metavar="X", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.warmup = 1000, 100
    if args.concurrency is not None:
        args.connections = str(args.concurrency)
    try:
        args.connections = [int(c) for c in args.connections.split(",")]
    except ValueError:
        p.error("--connections takes whole numbers joined by commas, not %r" % (args.connections,))
    args.phases = args.phases.split(",")
    unknown = set(args.phases) - set(PHASES)
    if unknown or any(c < 1 for c in args.connections) or args.load_processes < 1:
        p.error("phases are %s; connections and --load-processes at least 1" % (", ".join(PHASES),))
    return args


PHASES = ("floor", "balance", "purchase", "mix")


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

    # The collector settings tvlink's roles start with (tvlink.cli.tap):
    # the floor is not to pay for full collections the platform is spared.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10000, 10, 10)
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
        self.buffers = {1: b"", 2: b""}
        self.waiters = []
        self.ended = defer.Deferred()
        self.running = False

    def connectionMade(self):
        self.running = True

    def childDataReceived(self, fd, data):
        # Lines are cut per stream, so that a warning on standard error
        # never lands inside a line of standard output.
        *lines, self.buffers[fd] = (self.buffers.get(fd, b"") + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            for waiter in list(self.waiters):
                regex, d = waiter
                m = regex.search(line)
                if m:
                    self.waiters.remove(waiter)
                    d.callback(m)

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
def runPhase(reactor, port, makeRequest, count, concurrency, seconds, check, connected=None):
    """
    C{count} requests over C{concurrency} connections to C{port}. Once the
    connections are made, C{connected()} (if given) is called; the clock
    starts when it returns (or when the L{Deferred} it returns fires).

    @return: C{(answered, errors, elapsed, latencies, span)}, C{span} the
        C{time.monotonic()} of the first request and of the last answer
        (the system's clock, the same in every process).
    """
    connections = []
    for _ in range(concurrency):
        endpoint = TCP4ClientEndpoint(reactor, HOST, port, timeout=5)
        connections.append((yield connectProtocol(endpoint, KeepAlive())))
    if connected is not None:
        yield connected()
    latencies = []
    errors = [0]
    issued = [0]
    deadline = time.perf_counter() + seconds
    first = time.monotonic()
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
    span = (first, time.monotonic())
    for connection in connections:
        connection.transport.loseConnection()
    return len(latencies), errors[0], elapsed, sorted(latencies), span


def card(index):
    return "6222020%012d" % (index % 500,)


def requestMaker(kind, run):
    """
    The C{(method, path, body)} of request C{i} of phase C{kind}; C{run}
    makes the order ids of this run (and of this load process) its own.
    """

    def balance(i):
        return "POST", "/v1/balance", json.dumps({"card": card(i)}).encode()

    def purchase(i):
        return "POST", "/v1/payments", json.dumps({"card": card(i), "amount": 1, "order": "%s-%d" % (run, i)}).encode()

    def mix(i):
        kind = i % 10
        if kind < 2:
            return balance(i)
        if kind < 4 and i >= 10:
            # A repeat of an order paid ten requests ago: answered from the
            # journal, nothing charged.
            return purchase(i - 10 + 5)
        return purchase(i)

    def floor(i):
        return "POST", "/", b'{"card": "6222020000000000001", "amount": 1, "order": "f"}'

    return {"floor": floor, "balance": balance, "purchase": purchase, "mix": mix}[kind]


def ok(code, body):
    return code == 200 and b'"approved"' in body


@defer.inlineCallbacks
def loadChild(reactor, port, kind, connections, count, seconds, run):
    """
    The child: connect, say C{ready} and wait for C{go} on standard input
    (so that every load process starts at once), run one phase and print
    its figures as a JSON line.
    """

    def connected():
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        # Nothing else is going on here until the phase starts: waiting
        # for the word on a blocking read is the simplest barrier.
        if sys.stdin.readline().strip() != "go":
            raise RuntimeError("the benchmark went away before the phase began")

    answered, errors, elapsed, latencies, span = yield runPhase(
        reactor, port, requestMaker(kind, run), count, connections, seconds, ok, connected
    )
    sys.stdout.write(json.dumps({"answered": answered, "errors": errors, "elapsed": elapsed, "latencies": latencies,
                                 "span": span}) + "\n")
    sys.stdout.flush()


@defer.inlineCallbacks
def measure(reactor, args, work, port, kind, connections, count, run, serving=()):
    """
    One phase, in this process or split over C{--load-processes}. The
    load processes connect first and start together; the phase lasts
    from the first request any of them sends to the last answer any of
    them gets.

    @param serving: the children serving the phase, whose CPU time
        while it runs (connections made) is measured.
    @return: C{(answered, errors, elapsed, sorted latencies, cpu)},
        C{cpu} the serving processes' CPU seconds (C{None} without
        C{/proc}).
    """
    cpu = []

    def started():
        cpu.append(cpuSeconds(serving))

    if args.load_processes == 1:
        answered, errors, elapsed, latencies, span = yield runPhase(
            reactor, port, requestMaker(kind, run), count, connections, args.seconds, ok, started
        )
    else:
        share = max(1, connections // args.load_processes)
        children = [
            spawn(reactor, "load %d" % (n,), [sys.executable, os.path.abspath(__file__), "--load-child", str(port), kind,
                                              str(share), str(max(1, count // args.load_processes)), str(args.seconds),
                                              "%s-p%d" % (run, n)], work)
            for n in range(args.load_processes)
        ]
        try:
            yield defer.gatherResults([c.waitFor(r"^ready$", reactor, 60) for c in children], consumeErrors=True)
            started()
            for child in children:
                child.transport.write(b"go\n")
            lines = yield defer.gatherResults(
                [c.waitFor(r"^(\{.*\})$", reactor, args.seconds + 30) for c in children], consumeErrors=True
            )
        except BaseException:
            # One that failed leaves no other waiting for its word.
            for child in children:
                if child.running:
                    child.transport.signalProcess("KILL")
            raise
        figures = [json.loads(m.group(1)) for m in lines]
        answered = sum(f["answered"] for f in figures)
        errors = sum(f["errors"] for f in figures)
        latencies = sorted(x for f in figures for x in f["latencies"])
        elapsed = max(f["span"][1] for f in figures) - min(f["span"][0] for f in figures)
    cpu.append(cpuSeconds(serving))
    if args.load_processes != 1:
        for child in children:
            yield child.ended
    used = None if None in cpu else cpu[1] - cpu[0]
    return answered, errors, elapsed, latencies, used


def cpuSeconds(children):
    """
    The CPU time (user and system) the processes of C{children} have used,
    from C{/proc}; C{None} where there is no C{/proc}.
    """
    total = 0.0
    for child in children:
        try:
            with open("/proc/%d/stat" % (child.transport.pid,)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def hasFrontDoor():
    """
    Whether the tvlink beside this script has the front door's options
    (so the same script measures an older checkout too).
    """
    import importlib.util

    sys.path.insert(0, ROOT)
    try:
        return importlib.util.find_spec("tvlink.cli.httpopts") is not None
    finally:
        sys.path.remove(ROOT)


@defer.inlineCallbacks
def main(reactor, args):
    if args.serve_floor:
        yield serveFloor(reactor)
        return
    if args.load_child:
        port, kind, connections, count, seconds, run = args.load_child
        yield loadChild(reactor, int(port), kind, int(connections), int(count), float(seconds), run)
        return
    work = tempfile.mkdtemp(prefix="tvlink-webbench-")
    children = []
    wall = reactor.callLater(args.wall, lambda: [c.transport.signalProcess("KILL") for c in children if c.running])
    try:
        ledger = ["--ledger", "memory"]
        if args.ledger == "sqlite":
            ledgerPath = os.path.join(work, "ledger.db")
            ledger = ["--ledger", "sqlite:" + ledgerPath]
            opener = spawn(reactor, "ledger", [sys.executable, "-c", OPEN_CARDS, ledgerPath], work)
            yield opener.ended
        payment = spawn(reactor, "payment", TWISTD + ["-n", "--pidfile=", "tvlink", "payment", "--listen", "tcp:0:interface=%s" % HOST] + ledger, work)
        children.append(payment)
        floor = spawn(reactor, "floor", [sys.executable, os.path.abspath(__file__), "--serve-floor"], work)
        children.append(floor)
        paymentPort = int((yield payment.waitFor(r"payment listening on 127\.0\.0\.1:(\d+)", reactor)).group(1))
        floorPort = int((yield floor.waitFor(r"floor listening on 127\.0\.0\.1:(\d+)", reactor)).group(1))
        # The bench's many connections come from one address, and it
        # measures the API, not the front door's caps.
        limits = ["--http-max-per-client", "100000", "--api-max-calls", "100000"] if hasFrontDoor() else []
        platform = spawn(
            reactor,
            "platform",
            TWISTD + ["-n", "--pidfile=", "tvlink", "platform", "--connect", "%s:%d" % (HOST, paymentPort),
                      "--http", "tcp:0:interface=%s" % HOST, "--journal", "sqlite:" + os.path.join(work, "journal.db")]
            + limits,
            work,
        )
        children.append(platform)
        webPort = int((yield platform.waitFor(r"web listening on http://127\.0\.0\.1:(\d+)/", reactor)).group(1))
        yield platform.waitFor(r"link 127\.0\.0\.1:%d ready \(platform\)" % (paymentPort,), reactor)

        run = "%d" % (os.getpid(),)
        print("tvlink web bench: %d requests a phase (after %d warm-up), %s connections, load in %s, ledger %s, 127.0.0.1"
              % (args.requests, args.warmup, "/".join(map(str, args.connections)),
                 "this process" if args.load_processes == 1 else "%d processes" % args.load_processes, args.ledger))
        print("%6s %-9s %9s %7s %8s %9s %8s %8s %8s %7s %8s" % (
            "conns", "phase", "requests", "errors", "seconds", "req/s", "p50 ms", "p99 ms", "max ms", "/floor", "cpu us"))
        for connections in args.connections:
            results = {}
            for name in args.phases:
                port = floorPort if name == "floor" else webPort
                tag = "%s-%d-%s" % (run, connections, name)
                yield measure(reactor, args, work, port, name, connections, args.warmup, tag + "-w")
                # The serving processes' CPU per answer: the floor's, or the
                # platform's and the payment node's together.
                serving = [floor] if name == "floor" else [platform, payment]
                answered, errors, elapsed, lat, used = yield measure(
                    reactor, args, work, port, name, connections, args.requests, tag, serving
                )
                cpu = "%8.0f" % (used / answered * 1e6,) if used is not None and answered else "%8s" % ("",)
                rps = answered / elapsed if elapsed else 0.0
                results[name] = rps
                ratio = "%7.3f" % (rps / results["floor"],) if "floor" in results and name != "floor" else "%7s" % ("",)
                print("%6d %-9s %9d %7d %8.2f %9.0f %8.2f %8.2f %8.2f %s %s" % (
                    connections, name, answered, errors, elapsed, rps, percentile(lat, 50) * 1000,
                    percentile(lat, 99) * 1000, (lat[-1] if lat else 0) * 1000, ratio, cpu))
                sys.stdout.flush()
    finally:
        if wall.active():
            wall.cancel()
        for child in children:
            if child is not None and child.running and child.name == "floor":
                child.transport.closeStdin()
        for child in reversed(children):
            yield child.stop(reactor)
        shutil.rmtree(work, ignore_errors=True)


#: Opens the 500 cards of the load on a new ledger (for --ledger sqlite).
OPEN_CARDS = (
    "import sys; from tvlink.cli.ledger import main; path = sys.argv[1]; main(['--db', path, 'init']); "
    "[main(['--db', path, 'open', '6222020%012d' % i, '100000000']) for i in range(500)]"
)


if __name__ == "__main__":
    arguments = parseArgs(sys.argv[1:])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    task.react(main, [arguments])
