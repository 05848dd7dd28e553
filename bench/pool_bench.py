#!/usr/bin/env python
"""
One platform against one and against two payment processes, on loopback
TCP, in the same run; and a floor for reference.

The payment processes are real C{twistd -n tvlink payment} children (the
demo account handler). The platform is this process: one
L{tvlink.PlatformService} linked to payment A only, another linked to A
and B (least-pending), both started up front and kept linked throughout
(heartbeats on). Each drives C{service.request(...)} with a balance
inquiry (C{0200}/C{300000}: the handler looks the card up and answers
C{00}; nothing is spent, so any number of requests is approved). The
floor is a bare Twisted echo of ascii4-framed bodies of the same size, one
server child, as in C{bench/link_bench.py}. A third platform service, with
two links to payment A (C{links_per_endpoint=2}), tells what a second
connection alone brings from what a second process brings.

Each target runs pipelined (64 in flight) and sequentially (one at a
time) after a warm-up, in rounds that rotate which target goes first;
the table at the end puts the medians side by side.

Run C{python bench/pool_bench.py --help} for the options, and see
C{bench/README.rst}. Latencies are taken from C{time.perf_counter}, for
measurement only; the library keeps to C{reactor.seconds()}.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Factory

import tvlink
from tvlink.link import wire

# The floor, the load generator and the process helpers are link_bench's,
# so the two benchmarks measure the same way.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from link_bench import Result as LinkResult  # noqa: E402
from link_bench import (  # noqa: E402
    BenchRunner,
    armHardStop,
    printSetting,
    runBench,
    FloorClient,
    FloorEchoServer,
    TVLinkClient,
    childCPU,
    dieWithParent,
    killChildren,
    median,
)

HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: twistd as a child of this interpreter (C{twisted.scripts.twistd} has no
#: C{__main__} guard).
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]

#: A balance inquiry: the demo handler answers it 00 however often it is
#: asked.
REQUEST = {"mti": "0200", "proc": "300000", "pan": "6222020000000000018"}

TARGETS = ("floor", "one", "one2", "two")
LABELS = {"floor": "floor", "one": "1 payment", "one2": "1p 2 links", "two": "2 payments"}


def parseArgs(argv):
    p = argparse.ArgumentParser(
        description="tvlink pool benchmark: one platform against one and two payment processes"
    )
    p.add_argument("--requests", type=int, default=40000, help="pipelined requests per phase (40000)")
    p.add_argument("--sequential", type=int, default=4000, help="sequential requests per phase (4000)")
    p.add_argument("--pipeline", type=int, default=64, help="requests in flight when pipelined (64)")
    p.add_argument(
        "--warmup", type=int, default=None,
        help="warm-up requests per target (default: a fifth of --requests, at most 4000)",
    )
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (3; --quick: 1)")
    p.add_argument(
        "--seconds", type=float, default=30.0,
        help="time limit of one phase; it ends at its count or this, whichever comes first (30)",
    )
    p.add_argument(
        "--wall", type=float, default=240.0,
        help="hard wall-clock cap on the whole run, children included (240)",
    )
    p.add_argument("--heartbeat", type=float, default=1.0, help="tvlink heartbeat, s (1.0)")
    p.add_argument("--idle-timeout", type=float, default=5.0, help="tvlink idle timeout, s (5.0)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s (10.0)")
    p.add_argument(
        "--quick", action="store_true", help="a short run: 4000 pipelined, 500 sequential, 1 round"
    )
    p.add_argument("--verbose", action="store_true", help="send Twisted logs to stderr")
    # Child-process options (the floor server).
    p.add_argument("--serve", choices=("floor",), help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        if "--rounds" not in argv:
            args.rounds = 1
        args.requests = min(args.requests, 4000)
        args.sequential = min(args.sequential, 500)
        if args.warmup is None:
            args.warmup = 800
    if args.warmup is None:
        args.warmup = min(4000, max(args.requests // 5, 1))
    for name in ("requests", "sequential", "pipeline", "rounds", "warmup"):
        if getattr(args, name) < 1:
            p.error("--%s must be at least 1" % (name,))
    if args.seconds <= 0 or args.wall <= 0:
        p.error("--seconds and --wall must be positive")
    return args


def startLogging(verbose):
    if verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])


# -- the children ------------------------------------------------------------


def serveFloor(args):
    """
    Child process: the floor's framed echo on an ephemeral loopback port,
    written to C{--port-file}; runs until stdin closes, SIGTERM, or the
    wall-clock cap.
    """
    dieWithParent(args.parent)
    startLogging(args.verbose)
    from twisted.internet import reactor

    port = reactor.listenTCP(0, Factory.forProtocol(FloorEchoServer), interface=HOST)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % (port.getHost().port,))
    os.replace(tmp, args.port_file)

    def stop():
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def watchStdin():
        for _ in sys.stdin:
            pass
        reactor.callFromThread(stop)

    threading.Thread(target=watchStdin, daemon=True).start()
    reactor.callLater(args.wall + 30, stop)
    reactor.run()
    os._exit(0)


def _dieWithParent():
    """
    In a child between fork and exec: be killed when this process dies
    (Linux; kept across exec).
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawnFloor(args, tmpdir):
    portFile = os.path.join(tmpdir, "floor.port")
    argv = [
        sys.executable, os.path.abspath(__file__), "--serve", "floor", "--port-file", portFile,
        "--parent", str(os.getpid()), "--wall", repr(args.wall),
    ]
    if args.verbose:
        argv.append("--verbose")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
    proc.label = "floor"
    proc.portFile = portFile
    return proc


def spawnPayment(name, args, tmpdir):
    """
    Start C{twistd -n --pidfile= tvlink payment} on an ephemeral loopback
    port, its log in C{tmpdir}.
    """
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    argv = TWISTD + [
        "-n", "--pidfile=", "tvlink", "payment", "--listen", "tcp:0:interface=%s" % (HOST,),
        "--ledger", "memory", "--heartbeat", repr(args.heartbeat), "--idle-timeout", repr(args.idle_timeout),
    ]
    log = os.path.join(tmpdir, "payment-%s.log" % (name,))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=tmpdir,
            env=env, preexec_fn=_dieWithParent,
        )
    proc.label = "payment " + name
    proc.logFile = log
    return proc


def _bounded(proc, seconds, read):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("%s exited early with %s" % (proc.label, proc.returncode))
        found = read()
        if found is not None:
            return found
        time.sleep(0.02)
    raise SystemExit("%s did not listen within %gs" % (proc.label, seconds))


def waitForFloor(proc, seconds=20.0):
    def read():
        try:
            with open(proc.portFile) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    return _bounded(proc, seconds, read)


def waitForPayment(proc, seconds=30.0):
    pattern = re.compile(r"payment listening on 127\.0\.0\.1:(\d+)")

    def read():
        with open(proc.logFile, encoding="utf-8", errors="replace") as f:
            match = pattern.search(f.read())
        return int(match.group(1)) if match else None

    return _bounded(proc, seconds, read)


# -- measuring -----------------------------------------------------------------


class Result(LinkResult):
    def __init__(self, mode, target, load, cpuClient, cpuServer, share=None):
        LinkResult.__init__(self, mode, target, load, cpuClient, cpuServer)
        self.target = target
        self.lastError = load.lastError
        self.share = share

    header = "%-10s %-10s %8s %6s %7s %8s %7s %7s %7s %9s %9s  %s" % (
        "mode", "target", "requests", "errors", "seconds", "tps",
        "p50 ms", "p99 ms", "max ms", "cpu-cl us", "cpu-sv us", "share",
    )

    def row(self):
        share = "%.1f%%/%.1f%%" % self.share if self.share else ""
        return "%-10s %-10s %8d %6d %7.3f %8.0f %7.3f %7.3f %7.2f %9.1f %9.1f  %s" % (
            self.mode, LABELS[self.target], self.done, self.errors, self.elapsed, self.tps,
            self.p50, self.p99, self.max, self.cpuClient, self.cpuServer, share,
        )


class Bench(BenchRunner):
    def __init__(self, reactor, args, floorPort, paymentPorts, children):
        BenchRunner.__init__(self, reactor, args, children)
        self.floorPort = floorPort
        self.paymentPorts = paymentPorts
        self.services = {}

    def servers(self, target):
        """
        The children that serve C{target}, for their CPU time.
        """
        if target == "floor":
            return [self.children["floor"]]
        if target in ("one", "one2"):
            return [self.children["A"]]
        return [self.children["A"], self.children["B"]]

    def serverCPU(self, target):
        values = [childCPU(proc.pid) for proc in self.servers(target)]
        return None if None in values else sum(values)

    def phase(self, mode, target, total, depth):
        service = self.services.get(target)
        before = [s["answered"] for s in service.status()] if service is not None else None
        d = self.runLoad(
            self.clients[target].send, total, depth, lambda: self.serverCPU(target)
        )

        def measured(result):
            load, cpu, scpu = result
            share = None
            if target in ("one2", "two"):
                after = [s["answered"] for s in service.status()]
                deltas = [b - a for a, b in zip(before, after)]
                total = sum(deltas) or 1
                share = tuple(100.0 * d / total for d in deltas)
            return Result(mode, target, load, cpu, scpu, share), load

        return d.addCallback(measured)

    @inlineCallbacks
    def run(self):
        args = self.args
        reactor = self.reactor
        options = dict(
            reactor=reactor, heartbeat=args.heartbeat, idle_timeout=args.idle_timeout,
            timeout=args.timeout, connect_timeout=10,
        )
        a, b = self.paymentPorts
        self.services = {
            "one": tvlink.PlatformService(["%s:%d" % (HOST, a)], **options),
            "one2": tvlink.PlatformService(["%s:%d" % (HOST, a)], links_per_endpoint=2, **options),
            "two": tvlink.PlatformService(["%s:%d" % (HOST, a), "%s:%d" % (HOST, b)], **options),
        }
        settings = self.services["one"].settings
        stamped, stan = settings.stamp(REQUEST)
        settings.stans.release(stan)
        body = wire.JSONCodec().encode(stamped)
        self.body = len(body)
        floor = yield connectProtocol(TCP4ClientEndpoint(reactor, HOST, self.floorPort), FloorClient(body))
        self.clients = {"floor": floor}
        for target, service in self.services.items():
            service.startService()
            count = len(service.factories)
            for _ in range(100):
                if len(service.readyLinks()) == count:
                    break
                yield self.sleep(0.1)
            else:
                raise RuntimeError("%s: not every link ready within 10s" % (LABELS[target],))
            self.clients[target] = TVLinkClient(service, REQUEST, args.timeout)
        self.out("request body %d B (%s); the floor echoes bodies of that size" % (self.body, "0200/300000"))
        warm = args.warmup
        self.out("warm-up: %d pipelined + %d sequential requests per target" % (warm, max(1, warm // 4)))
        for target in TARGETS:
            for total, depth in ((warm, args.pipeline), (max(1, warm // 4), 1)):
                result, load = yield self.phase("warm-up", target, total, depth)
                if load.errors:
                    raise RuntimeError("%s warm-up failed: %s" % (target, load.lastError))
        self.out()
        self.out(Result.header)
        for n in range(args.rounds):
            if n:
                self.out()
            order = TARGETS[n % len(TARGETS) :] + TARGETS[: n % len(TARGETS)]
            for mode, total, depth in (
                ("pipelined", args.requests, args.pipeline),
                ("sequential", args.sequential, 1),
            ):
                for target in order:
                    result, load = yield self.phase(mode, target, total, depth)
                    self.results.append(result)
                    self.out(result.row())
                    if load.errors:
                        self.out("  errors: %d, last: %s" % (load.errors, load.lastError))
        self.counters = {t: s.status() for t, s in self.services.items()}
        floor.transport.loseConnection()
        for service in self.services.values():
            yield service.stopService()
        self.finished = True


def summarize(bench, out):
    results = bench.results

    def med(mode, target, attr):
        return median(
            [getattr(r, attr) for r in results if r.mode == mode and r.target == target and not r.errors]
        )

    rounds = bench.args.rounds
    out()
    out(
        "side by side (%s; pipelined %d in flight):"
        % ("median of %d rounds" % (rounds,) if rounds > 1 else "this run", bench.args.pipeline)
    )
    out("%-22s" % ("",) + "".join("%12s" % (LABELS[t],) for t in TARGETS))
    for mode, attr, fmt, title in (
        ("pipelined", "tps", "%12.0f", "pipelined tps"),
        ("pipelined", "p50", "%12.3f", "pipelined p50 ms"),
        ("pipelined", "p99", "%12.3f", "pipelined p99 ms"),
        ("sequential", "tps", "%12.0f", "sequential tps"),
        ("sequential", "p50", "%12.3f", "sequential p50 ms"),
        ("sequential", "p99", "%12.3f", "sequential p99 ms"),
        ("pipelined", "cpuClient", "%12.1f", "pipelined cpu-cl us"),
        ("pipelined", "cpuServer", "%12.1f", "pipelined cpu-sv us"),
    ):
        out("%-22s" % (title,) + "".join(fmt % (med(mode, t, attr),) for t in TARGETS))
    one, two, floor = (med("pipelined", t, "tps") for t in ("one", "two", "floor"))
    out()
    links = med("pipelined", "one2", "tps")
    out("ratios (pipelined tps): 2 payments / 1 payment = %.3f; 1 payment 2 links / 1 payment = %.3f"
        % (two / one, links / one))
    out("                        1 payment / floor = %.3f; 2 payments / floor = %.3f"
        % (one / floor, two / floor))
    for target, entries in sorted(bench.counters.items()):
        for entry in entries:
            out(
                "  platform link %-10s -> %s: answered=%d timedOut=%d late=%d reconnects=%d "
                "heartbeatsOut=%d heartbeatsIn=%d"
                % (
                    LABELS[target], entry["endpoint"], entry["answered"], entry["timedOut"],
                    entry["late"], entry["reconnects"], entry["heartbeatsOut"], entry["heartbeatsIn"],
                )
            )
    errors = sum(r.errors for r in results)
    out("  (tps: answers per second; p50/p99/max: send-to-answer latency; cpu-cl/cpu-sv: CPU "
        "microseconds per request in this process / the serving children; share: answers per "
        "link, A/B for 2 payments, the two links to A for 1p 2 links)")
    return errors == 0


def main(argv=None):
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    if args.serve:
        return serveFloor(args)
    startLogging(args.verbose)
    tmpdir = tempfile.mkdtemp(prefix="pool_bench.")
    children = {}

    armHardStop("pool_bench", children, args.wall)
    try:
        children["floor"] = spawnFloor(args, tmpdir)
        children["A"] = spawnPayment("A", args, tmpdir)
        children["B"] = spawnPayment("B", args, tmpdir)
        floorPort = waitForFloor(children["floor"])
        ports = (waitForPayment(children["A"]), waitForPayment(children["B"]))

        from twisted.internet import reactor

        print(
            "pool_bench: one platform (this process) against 1 and 2 `twistd tvlink payment` "
            "processes on %s; pipeline %d; heartbeat %gs, idle-timeout %gs, request timeout %gs"
            % (HOST, args.pipeline, args.heartbeat, args.idle_timeout, args.timeout)
        )
        printSetting(reactor, args)
        bench = Bench(reactor, args, floorPort, ports, children)
        if not runBench("pool_bench", reactor, bench):
            return 2
        return 0 if summarize(bench, print) else 1
    finally:
        killChildren(list(children.values()))
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
