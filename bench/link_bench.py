#!/usr/bin/env python
"""
Request/response over one tvlink link on loopback TCP, against a floor.

The tvlink side is a L{tvlink.PaymentService} in a child process (its
handler answers at once) and a L{tvlink.PlatformService} here, driving
C{service.request(message, timeout=...)} over its one link, with
heartbeats and per-request timeouts active. The floor is a bare Twisted
echo of ascii4-framed bodies: a server L{Protocol} in another child
process and a client L{Protocol} here that matches answers first in,
first out. Both carry the same 200-byte JSON bodies, pipelined (64 in
flight) and sequentially (one at a time), in the same run.

Run C{python bench/link_bench.py --help} for the options, and see
C{bench/README.rst}. Latencies are taken from C{time.perf_counter}, for
measurement only; the library keeps to C{reactor.seconds()}.
"""

import argparse
import cProfile
import io
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

import tvlink
from tvlink.link import wire
from tvlink.link.interfaces import IMessageHandler

HOST = "127.0.0.1"

#: Goals checked at the end of a run.
PIPELINED_TPS_GOAL = 0.5
SEQUENTIAL_P50_GOAL = 2.0

#: A 0200 purchase, stamped by the link with sender, stan and time, then
#: padded to the body size.
BASE_REQUEST = {
    "mti": "0200",
    "proc": "000000",
    "pan": "6222020000000000001",
    "amount": "000000000100",
    "currency": "156",
    "order": "BENCH0000000001",
}


def parseArgs(argv):
    p = argparse.ArgumentParser(
        description="tvlink one-link request/response benchmark against a bare framed echo"
    )
    p.add_argument("--requests", type=int, default=20000, help="pipelined requests per phase (20000)")
    p.add_argument(
        "--sequential", type=int, default=5000, help="sequential requests per phase (5000)"
    )
    p.add_argument("--pipeline", type=int, default=64, help="requests in flight when pipelined (64)")
    p.add_argument(
        "--warmup", type=int, default=None,
        help="warm-up requests per side before measuring (default: a fifth of --requests, "
        "at most 4000; a quarter of that again sequentially)",
    )
    p.add_argument(
        "--seconds", type=float, default=30.0,
        help="time limit of one measured phase; it ends at --requests or this, whichever "
        "comes first (30)",
    )
    p.add_argument(
        "--wall", type=float, default=240.0,
        help="hard wall-clock cap on the whole run, children included (240)",
    )
    p.add_argument(
        "--rounds", type=int, default=5,
        help="measured rounds, alternating which side goes first; each ratio is the "
        "median of the rounds' own ratios (5; --quick: 1)",
    )
    p.add_argument("--body", type=int, default=200, help="message body size in bytes (200)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="tvlink heartbeat, s (1.0)")
    p.add_argument("--idle-timeout", type=float, default=5.0, help="tvlink idle timeout, s (5.0)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s (10.0)")
    p.add_argument(
        "--max-batch", type=int, default=None,
        help="tvlink max_batch on both sides: frames handled per reactor turn (the default)",
    )
    p.add_argument(
        "--quick", action="store_true",
        help="a short run: 4000 pipelined, 1000 sequential, 800 warm-up, 1 round",
    )
    p.add_argument(
        "--profile", action="store_true",
        help="after the measured phases, run the tvlink pipelined phase again under cProfile "
        "(both processes) and print the top 25 functions by tottime",
    )
    p.add_argument(
        "--profile-phase", choices=("pipelined", "sequential"), default="pipelined",
        help="which tvlink phase --profile runs (pipelined)",
    )
    p.add_argument("--profile-top", type=int, default=25, help=argparse.SUPPRESS)
    p.add_argument(
        "--check", action="store_true", help="exit 1 when a floor goal is not met"
    )
    p.add_argument(
        "--pin", metavar="C,S",
        help="pin this process to CPU C and the server children to CPU S (Linux), "
        "for steadier latencies; e.g. --pin 0,1",
    )
    p.add_argument("--verbose", action="store_true", help="send Twisted logs to stderr")
    # Child-process options.
    p.add_argument("--serve", choices=("tvlink", "floor"), help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        if "--rounds" not in " ".join(argv):
            args.rounds = 1
        args.requests = min(args.requests, 4000)
        args.sequential = min(args.sequential, 1000)
        if args.warmup is None:
            args.warmup = 800
    if args.warmup is None:
        args.warmup = min(4000, max(args.requests // 5, 1))
    for name in ("requests", "sequential", "pipeline", "rounds", "body"):
        if getattr(args, name) < 1:
            p.error("--%s must be at least 1" % (name,))
    if args.body > 9999:
        p.error("--body must fit an ascii4 header (at most 9999)")
    if args.seconds <= 0 or args.wall <= 0:
        p.error("--seconds and --wall must be positive")
    if args.pin is not None:
        try:
            client, server = (int(c) for c in args.pin.split(","))
        except ValueError:
            p.error("--pin takes two CPU numbers, C,S")
        if not hasattr(os, "sched_setaffinity"):
            p.error("--pin needs os.sched_setaffinity (Linux)")
        args.pin = (client, server)
    return args


def startLogging(verbose):
    if verbose:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])


def settingsOptions(args, reactor):
    options = dict(
        reactor=reactor,
        heartbeat=args.heartbeat,
        idle_timeout=args.idle_timeout,
        timeout=args.timeout,
        header="ascii4",
    )
    if args.max_batch is not None:
        options["max_batch"] = args.max_batch
    return options


# -- the child processes ---------------------------------------------------


class FloorEchoServer(Protocol):
    """
    The floor's server: echo every ascii4-framed body back, framed.
    """

    _buffer = b""

    def dataReceived(self, data):
        buf = self._buffer + data if self._buffer else data
        end = len(buf)
        pos = 0
        while end - pos >= 4:
            stop = pos + 4 + int(buf[pos : pos + 4])
            if stop > end:
                break
            self.frameReceived(buf[pos + 4 : stop])
            pos = stop
        self._buffer = buf[pos:]

    def frameReceived(self, body):
        self.transport.write(b"%04d" % (len(body),) + body)


@implementer(IMessageHandler)
class PaddedApproval:
    """
    Answer every request C{00} at once, padded so the answer body is as
    long as the request body.
    """

    def __init__(self, size):
        self.size = size
        self.codec = wire.JSONCodec()
        self.pad = None

    def handle(self, message):
        pad = self.pad
        if pad is None:
            probe = {
                "resp": "00",
                "pad": "",
                "mti": wire.responseMTI(message["mti"]),
                "sender": message["sender"],
                "stan": message["stan"],
                "time": message.get("time", ""),
            }
            pad = self.pad = "x" * max(0, self.size - len(self.codec.encode(probe)))
        return {"resp": "00", "pad": pad}


def dieWithParent(parent):
    """
    Ask Linux to kill this process when its parent goes (best effort).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if parent and os.getppid() != parent:
        os._exit(1)


def serve(args):
    """
    Child process: serve the floor echo or a tvlink PaymentService on an
    ephemeral loopback port, write the port to C{--port-file}, and run
    until stdin closes, SIGTERM, or the wall-clock cap.

    stdin lines C{profile-start} and C{profile-stop PATH} toggle cProfile.
    """
    dieWithParent(args.parent)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin[1]})
    startLogging(args.verbose)
    from twisted.internet import reactor

    def writePort(port):
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % (port,))
        os.replace(tmp, args.port_file)

    if args.serve == "floor":
        port = reactor.listenTCP(0, Factory.forProtocol(FloorEchoServer), interface=HOST)
        writePort(port.getHost().port)
    else:
        service = tvlink.PaymentService(
            "tcp:0:interface=%s" % (HOST,),
            handler=PaddedApproval(args.body),
            **settingsOptions(args, reactor)
        )
        service.startService()
        service.whenListening().addCallback(lambda p: writePort(p.getHost().port))

    profiler = [None]

    def command(line):
        # Runs in the reactor thread: cProfile profiles the thread that
        # enables it.
        if line == "profile-start" and profiler[0] is None:
            profiler[0] = cProfile.Profile()
            profiler[0].enable()
        elif line.startswith("profile-stop ") and profiler[0] is not None:
            prof, profiler[0] = profiler[0], None
            prof.disable()
            path = line.split(" ", 1)[1]
            prof.dump_stats(path + ".tmp")
            os.replace(path + ".tmp", path)

    def watchStdin():
        for raw in sys.stdin:
            reactor.callFromThread(command, raw.strip())
        reactor.callFromThread(stop)

    def stop():
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    threading.Thread(target=watchStdin, daemon=True).start()
    reactor.callLater(args.wall + 30, stop)
    reactor.run()
    os._exit(0)


# -- the load --------------------------------------------------------------


def percentile(ordered, q):
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Result:
    def __init__(self, mode, side, load, cpuClient, cpuServer):
        self.mode = mode
        self.side = side
        self.done = load.done
        self.errors = load.errors
        self.elapsed = load.finished - load.started
        self.tps = load.done / self.elapsed if self.elapsed > 0 else 0.0
        lat = sorted(load.latencies)
        self.p50 = percentile(lat, 0.50) * 1000
        self.p99 = percentile(lat, 0.99) * 1000
        self.max = (lat[-1] if lat else float("nan")) * 1000
        per = 1e6 / load.done if load.done else float("nan")
        self.cpuClient = cpuClient * per
        self.cpuServer = cpuServer * per if cpuServer is not None else float("nan")

    header = "%-10s %-6s %8s %8s %8s %8s %8s %8s %7s %9s %9s" % (
        "mode", "side", "requests", "errors", "seconds", "tps",
        "p50 ms", "p99 ms", "max ms", "cpu-cl us", "cpu-sv us",
    )

    def row(self):
        return "%-10s %-6s %8d %8d %8.3f %8.0f %8.3f %8.3f %7.2f %9.1f %9.1f" % (
            self.mode, self.side, self.done, self.errors, self.elapsed, self.tps,
            self.p50, self.p99, self.max, self.cpuClient, self.cpuServer,
        )


class Load:
    """
    Keep C{depth} requests in flight until C{total} have been sent or
    C{seconds} have passed, then wait for the last answers. C{send(load)}
    sends one request and later calls L{answered} or L{failed} with the
    C{perf_counter} time it was sent.
    """

    maxErrors = 100
    stopped = False

    def __init__(self, send, total, depth, seconds):
        self.send = send
        self.total = total
        self.depth = depth
        self.seconds = seconds
        self.issued = self.done = self.errors = 0
        self.latencies = []
        self.lastError = None
        self.finished = None
        self.whenDone = Deferred()

    def start(self):
        self.started = time.perf_counter()
        self.deadline = self.started + self.seconds
        for _ in range(min(self.depth, self.total)):
            self._issue()
        return self.whenDone

    def _issue(self):
        self.issued += 1
        self.send(self)

    def answered(self, answer, sent):
        now = time.perf_counter()
        self.latencies.append(now - sent)
        self.done += 1
        self._next(now)
        return None

    def failed(self, failure, sent):
        self.errors += 1
        self.done += 1
        self.lastError = failure.getErrorMessage()
        self._next(time.perf_counter())
        return None

    def _next(self, now):
        if (
            self.issued < self.total
            and now < self.deadline
            and self.errors < self.maxErrors
            and not self.stopped
        ):
            self._issue()
        elif self.done >= self.issued and self.finished is None:
            self.finished = now
            self.whenDone.callback(self)


class FloorClient(Protocol):
    """
    The floor's client: frame a body with a 4-digit ASCII length, send
    it, and match each framed answer to the oldest request in flight.
    """

    lost = None

    def __init__(self, body):
        self.frame = b"%04d" % (len(body),) + body
        self.inFlight = deque()
        self._buffer = b""

    def send(self, load):
        if self.lost is not None:
            load.failed(self.lost, time.perf_counter())
            return
        self.inFlight.append((load, time.perf_counter()))
        self.transport.write(self.frame)

    def connectionLost(self, reason):
        self.lost = reason
        inFlight, self.inFlight = self.inFlight, deque()
        for load, sent in inFlight:
            load.failed(reason, sent)

    def dataReceived(self, data):
        buf = self._buffer + data if self._buffer else data
        end = len(buf)
        pos = 0
        while end - pos >= 4:
            stop = pos + 4 + int(buf[pos : pos + 4])
            if stop > end:
                break
            load, sent = self.inFlight.popleft()
            load.answered(buf[pos + 4 : stop], sent)
            pos = stop
        self._buffer = buf[pos:]


class TVLinkClient:
    """
    The tvlink client: C{service.request(message, timeout=...)}.
    """

    def __init__(self, service, message, timeout):
        self.service = service
        self.message = message
        self.timeout = timeout

    def send(self, load):
        sent = time.perf_counter()
        d = self.service.request(self.message, timeout=self.timeout)
        d.addCallbacks(self._answered, load.failed, callbackArgs=(load, sent), errbackArgs=(sent,))

    @staticmethod
    def _answered(answer, load, sent):
        if answer.get("resp") != "00":
            load.errors += 1
            load.lastError = "answered %r" % (answer.get("resp"),)
        return load.answered(answer, sent)


def childCPU(pid):
    """
    CPU seconds (user + system) used so far by process C{pid}, or C{None}.
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def ownCPU():
    t = os.times()
    return t.user + t.system


def fitRequest(size, settings):
    """
    The request dict whose stamped body is C{size} bytes, and that body.
    """
    codec = wire.JSONCodec()
    message = dict(BASE_REQUEST, pad="")
    stamped, allocated = settings.stamp(message)
    if allocated is not None:
        settings.stans.release(allocated)
    stamped["stan"] = "000001"
    short = size - len(codec.encode(stamped))
    if short < 0:
        raise SystemExit("--body %d is smaller than a bare request (%d bytes)" % (size, size - short))
    message["pad"] = stamped["pad"] = "x" * short
    body = codec.encode(stamped)
    assert len(body) == size, (len(body), size)
    return message, body


class BenchRunner:
    """
    What a benchmark run shares: its reactor, arguments and children, the
    wall-clock cap, and stopping the reactor when C{run} is over.
    """

    def __init__(self, reactor, args, children):
        self.reactor = reactor
        self.args = args
        self.children = children
        self.results = []
        self.error = None
        self.capped = False
        self.load = None
        self.finished = False

    def out(self, text=""):
        print(text, flush=True)

    def wallCap(self):
        self.capped = True
        if self.load is not None:
            self.load.stopped = True
        self.error = "wall-clock cap of %gs reached" % (self.args.wall,)
        if self.reactor.running:
            self.reactor.stop()

    def start(self):
        d = self.run()
        d.addErrback(self._failed)
        d.addBoth(lambda _: self.reactor.running and not self.capped and self.reactor.stop())

    def _failed(self, failure):
        if self.error is None:
            self.error = failure.getTraceback()

    def runLoad(self, send, total, depth, serverCPU):
        """
        Run one L{Load} through C{send}; fire with C{(load, client CPU
        seconds, server CPU seconds or None)}, the server's read with
        C{serverCPU()}.
        """
        if self.capped:
            raise RuntimeError("stopped at the wall-clock cap")
        load = self.load = Load(send, total, depth, self.args.seconds)
        cpu0, scpu0 = ownCPU(), serverCPU()

        def measured(load):
            cpu1, scpu1 = ownCPU(), serverCPU()
            scpu = scpu1 - scpu0 if scpu0 is not None and scpu1 is not None else None
            return load, cpu1 - cpu0, scpu

        return load.start().addCallback(measured)

    def sleep(self, seconds):
        return deferLater(self.reactor, seconds)


class Bench(BenchRunner):
    def __init__(self, reactor, args, floorPort, tvlinkPort, children):
        BenchRunner.__init__(self, reactor, args, children)
        self.floorPort = floorPort
        self.tvlinkPort = tvlinkPort
        self.profileText = {}
        self.counters = None

    def childCommand(self, name, line):
        proc = self.children[name]
        try:
            proc.stdin.write((line + "\n").encode("ascii"))
            proc.stdin.flush()
        except OSError:
            pass

    def phase(self, mode, side, total, depth):
        server = self.children[side].pid
        d = self.runLoad(self.clients[side].send, total, depth, lambda: childCPU(server))
        return d.addCallback(lambda r: (Result(mode, side, *r), r[0]))

    @inlineCallbacks
    def run(self):
        args = self.args
        reactor = self.reactor
        service = tvlink.PlatformService(
            ["%s:%d" % (HOST, self.tvlinkPort)], **settingsOptions(args, reactor)
        )
        self.service = service
        message, body = fitRequest(args.body, service.settings)
        floor = yield connectProtocol(
            TCP4ClientEndpoint(reactor, HOST, self.floorPort), FloorClient(body)
        )
        self.floor = floor
        service.startService()
        ready = service.whenReady()
        timer = reactor.callLater(15, ready.cancel)
        link = yield ready
        timer.cancel()
        self.link = link
        self.clients = {
            "floor": floor,
            "tvlink": TVLinkClient(service, message, args.timeout),
        }
        depth = args.pipeline
        warm = args.warmup
        self.out(
            "warm-up: %d pipelined + %d sequential requests per side"
            % (warm, max(1, warm // 4))
        )
        for side in ("floor", "tvlink"):
            for total, d in ((warm, depth), (max(1, warm // 4), 1)):
                result, load = yield self.phase("warm-up", side, total, d)
                if load.errors:
                    raise RuntimeError("%s warm-up failed: %s" % (side, load.lastError))
        # Let the link go write-idle once, so heartbeats flow both ways
        # before the measured phases (their timers run throughout).
        pause = min(1.5 * args.heartbeat, 10.0)
        self.out("idle pause: %.1fs (heartbeats every %gs of write silence)" % (pause, args.heartbeat))
        yield self.sleep(pause)
        self.out()
        self.out(Result.header)
        for n in range(args.rounds):
            for mode, total, d in (
                ("pipelined", args.requests, depth),
                ("sequential", args.sequential, 1),
            ):
                sides = ("floor", "tvlink") if n % 2 == 0 else ("tvlink", "floor")
                for side in sides:
                    result, load = yield self.phase(mode, side, total, d)
                    self.results.append(result)
                    self.out(result.row())
                    if load.errors:
                        self.out("  errors: %d, last: %s" % (load.errors, load.lastError))
        if args.profile:
            path = os.path.join(self.tmpdir, "server.prof")
            self.childCommand("tvlink", "profile-start")
            yield self.sleep(0.2)
            prof = cProfile.Profile()
            prof.enable()
            if args.profile_phase == "pipelined":
                result, load = yield self.phase("pipelined", "tvlink", args.requests, depth)
            else:
                result, load = yield self.phase("sequential", "tvlink", args.sequential, 1)
            prof.disable()
            self.childCommand("tvlink", "profile-stop " + path)
            self.profiled = result
            self.profileText["client"] = profileTop(prof, args.profile_top)
            for _ in range(50):
                if os.path.exists(path):
                    break
                yield self.sleep(0.1)
            if os.path.exists(path):
                self.profileText["server"] = profileTop(path, args.profile_top)
        self.counters = dict(link.counters)
        floor.transport.loseConnection()
        yield service.stopService()
        self.finished = True


def profileTop(source, top):
    out = io.StringIO()
    stats = pstats.Stats(source, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    # Drop pstats' preamble up to the summary line.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "function calls" in line:
            lines = lines[i:]
            break
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def median(values):
    values = sorted(values)
    n = len(values)
    if not n:
        return float("nan")
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def summarize(bench, out):
    results = bench.results

    def paired(mode, attr):
        # Each round measures both sides back to back, under the same
        # conditions on the machine: the ratio is taken in each round, and
        # the median of those is reported.
        ratios = []
        for n in range(0, len(results), 4):
            one = {(r.mode, r.side): r for r in results[n : n + 4]}
            t, f = one.get((mode, "tvlink")), one.get((mode, "floor"))
            if t is not None and f is not None and not t.errors and not f.errors:
                ratios.append(getattr(t, attr) / getattr(f, attr))
        return median(ratios), ratios

    tpsRatio, tpsRatios = paired("pipelined", "tps")
    p50Ratio, p50Ratios = paired("sequential", "p50")
    rounds = bench.args.rounds
    label = (
        "median over %d rounds of each round's ratio" % (rounds,) if rounds > 1 else "this run"
    )
    okTps = tpsRatio >= PIPELINED_TPS_GOAL
    okP50 = p50Ratio <= SEQUENTIAL_P50_GOAL
    out("")
    out("ratios (%s):" % (label,))
    out(
        "  pipelined  tps tvlink/floor = %.3f  (goal >= %.1f)  %s"
        % (tpsRatio, PIPELINED_TPS_GOAL, "PASS" if okTps else "FAIL")
    )
    out(
        "  sequential p50 tvlink/floor = %.3f  (goal <= %.1f)  %s"
        % (p50Ratio, SEQUENTIAL_P50_GOAL, "PASS" if okP50 else "FAIL")
    )
    if rounds > 1:
        out("  each round: pipelined tps %s; sequential p50 %s" % (
            " ".join("%.3f" % r for r in tpsRatios), " ".join("%.3f" % r for r in p50Ratios)))
    if bench.counters is not None:
        c = bench.counters
        out(
            "tvlink link (platform side): requestsOut=%d answered=%d timedOut=%d late=%d "
            "heartbeatsOut=%d heartbeatsIn=%d"
            % (
                c["requestsOut"], c["answered"], c["timedOut"], c["late"],
                c["heartbeatsOut"], c["heartbeatsIn"],
            )
        )
    return okTps and okP50


def spawnChild(kind, args, tmpdir):
    portFile = os.path.join(tmpdir, kind + ".port")
    argv = [
        sys.executable, os.path.abspath(__file__), "--serve", kind, "--port-file", portFile,
        "--parent", str(os.getpid()), "--body", str(args.body),
        "--heartbeat", repr(args.heartbeat), "--idle-timeout", repr(args.idle_timeout),
        "--timeout", repr(args.timeout), "--wall", repr(args.wall),
    ]
    if args.max_batch is not None:
        argv += ["--max-batch", str(args.max_batch)]
    if args.verbose:
        argv.append("--verbose")
    if args.pin is not None:
        argv += ["--pin", "%d,%d" % (args.pin[1], args.pin[1])]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
    proc.portFile = portFile
    return proc


def waitForPort(proc, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("child %s exited early with %s" % (proc.args[3], proc.returncode))
        try:
            with open(proc.portFile) as f:
                return int(f.read())
        except (OSError, ValueError):
            time.sleep(0.02)
    raise SystemExit("child %s did not listen within %gs" % (proc.args[3], seconds))


def killChildren(children):
    """
    Stop every child: close its stdin (it stops on EOF), then SIGTERM,
    then SIGKILL; each step waits a little for the one before.
    """
    for proc in children:
        try:
            proc.stdin.close()
        except OSError:
            pass
    for step in ("terminate", "kill"):
        deadline = time.monotonic() + 2.0
        for proc in children:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in children:
            if proc.poll() is None:
                getattr(proc, step)()
    for proc in children:
        proc.wait()


def main(argv=None):
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    if args.serve:
        return serve(args)
    startLogging(args.verbose)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin[0]})
    tmpdir = tempfile.mkdtemp(prefix="link_bench.")
    children = {}

    armHardStop("link_bench", children, args.wall)
    try:
        children["floor"] = spawnChild("floor", args, tmpdir)
        children["tvlink"] = spawnChild("tvlink", args, tmpdir)
        floorPort = waitForPort(children["floor"])
        tvlinkPort = waitForPort(children["tvlink"])

        from twisted.internet import reactor

        print(
            "link_bench: one link on %s, body %d B JSON, ascii4 header, pipeline %d, "
            "heartbeat %gs, idle-timeout %gs, request timeout %gs"
            % (HOST, args.body, args.pipeline, args.heartbeat, args.idle_timeout, args.timeout)
        )
        printSetting(reactor, args)
        bench = Bench(reactor, args, floorPort, tvlinkPort, children)
        bench.tmpdir = tmpdir
        if not runBench("link_bench", reactor, bench):
            return 2
        ok = summarize(bench, print)
        print(
            "  (tps: answers per second; p50/p99/max: send-to-answer latency; cpu-cl/cpu-sv: "
            "CPU microseconds per request in this process / the server child)"
        )
        if args.profile:
            r = bench.profiled
            print()
            print(
                "profiled tvlink %s phase (cProfile on, figures not comparable): "
                "%d requests, %.0f tps, p50 %.3f ms" % (args.profile_phase, r.done, r.tps, r.p50)
            )
            for name, title in (
                ("client", "platform side (this process)"),
                ("server", "payment side (child process)"),
            ):
                if name in bench.profileText:
                    print()
                    print("--- profile, %s, top %d by tottime ---" % (title, args.profile_top))
                    print(bench.profileText[name])
        return 1 if args.check and not ok else 0
    finally:
        killChildren(list(children.values()))
        shutil.rmtree(tmpdir, ignore_errors=True)


def armHardStop(name, children, wall):
    """
    If the reactor has not come back within C{wall} seconds (and a grace
    of 20), kill the children and exit hard.
    """

    def hardStop(signum, frame):
        killChildren(list(children.values()))
        sys.stderr.write("%s: hard wall-clock cap reached, children killed\n" % (name,))
        os._exit(3)

    signal.signal(signal.SIGALRM, hardStop)
    signal.alarm(int(wall) + 20)


def printSetting(reactor, args):
    print(
        "  %d pipelined, %d sequential requests per phase (cap %gs each), %d round(s); "
        "%s, Python %s, Twisted %s, %d CPUs"
        % (
            args.requests, args.sequential, args.seconds, args.rounds,
            type(reactor).__name__, platform.python_version(), twistedVersion(),
            os.cpu_count() or 0,
        ),
        flush=True,
    )


def runBench(name, reactor, bench):
    """
    Run C{bench} on C{reactor} under its wall-clock cap; C{False} (the
    reason printed) if it failed.
    """
    reactor.callWhenRunning(bench.start)
    reactor.callLater(bench.args.wall, bench.wallCap)
    reactor.run()
    signal.alarm(0)
    if bench.error is None and not bench.finished:
        bench.error = "interrupted"
    if bench.error:
        sys.stdout.flush()
        print("%s: run failed: %s" % (name, bench.error), file=sys.stderr)
        return False
    return True


def twistedVersion():
    import twisted

    return twisted.__version__


if __name__ == "__main__":
    sys.exit(main())
