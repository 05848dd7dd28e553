"""
Hostile peers against a real payment process.

Garbage floods, slow-drip frames, oversize headers, thousands of
connections from one address and pipelined bursts, while a well-behaved
in-test L{tvlink.PlatformService} keeps asking the same process for
answers. The payment node must keep answering it quickly on the same
link, keep its memory bounded, and say in its log what it refused.

Everything runs on 127.0.0.1 with ports the OS picks; every wait has a
deadline on the real reactor and every loop a bound; the children are
stopped in cleanup. Run with C{python -m pytest tests/system/test_hostile.py} or
C{python -m twisted.trial tests.system.test_hostile}.
"""

import json
import random
import re
import struct
import sys

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.processes import ReactorTestCase, getReactor, pause, startPayment, waitUntil, withDeadline
from tvlink import PlatformService

#: A card the demo handler approves.
PAN = "6222020000000000018"

#: The payment node of the main test: the limits and timers the brief names.
HOSTILE_NODE = (
    "--max-links", "300",
    "--max-links-per-peer", "200",
    "--frame-timeout", "2",
    "--idle-timeout", "5",
    "--heartbeat", "1",
)

#: The good platform's worst acceptable round trip while under attack.
WORST_LATENCY = 2.0

#: The payment child may grow by no more than this while attacked.
RSS_GROWTH_LIMIT = 100 * 1024 * 1024


def report(text, *args):
    """
    A measured figure, for whoever reads the test output (C{pytest -s},
    trial's stdout).
    """
    sys.stdout.write("[hostile] " + (text % args) + "\n")
    sys.stdout.flush()


def rss(child):
    """
    The resident set size of a child process in bytes, from
    C{/proc/PID/status}.
    """
    with open("/proc/%d/status" % (child.transport.pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %s" % (child.name,))


def frame(message):
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return b"%04d" % (len(body),) + body


def request(sender, n, **fields):
    """
    A request with the key C{sender}/C{n}/fixed time.
    """
    message = {"sender": sender, "stan": "%06d" % (n,), "time": "0101000000"}
    message.update(fields)
    return message


def portsIn(child, pattern, after=0):
    """
    The peer ports in every line of C{child}'s output matching C{pattern}
    (whose first group is a port).
    """
    return {int(m.group(1)) for m in child.find(pattern, after)}


class Peer(protocol.Protocol):
    """
    A hostile (or merely raw) peer: writes what it is told, records when
    it connected and was dropped, and splits what it gets into ascii4
    frames when C{ascii4} (without quadratic copying).
    """

    def __init__(self, ascii4=True):
        self.ascii4 = ascii4
        self.frames = []
        self.received = 0
        self.lost = False
        self.lostAt = None
        self.connectedAt = None
        self.port = None
        self._buffer = bytearray()
        self._lostWaiters = []
        self.onFrame = None

    def connectionMade(self):
        self.connectedAt = getReactor().seconds()
        self.port = self.transport.getHost().port

    def dataReceived(self, data):
        self.received += len(data)
        if not self.ascii4:
            return
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            header = bytes(buf[pos : pos + 4])
            if not header.isdigit():
                # Not our business to judge the node here; stop parsing.
                self.ascii4 = False
                return
            length = int(header)
            if end - pos - 4 < length:
                break
            body = bytes(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            if body:
                self.frames.append(body)
                if self.onFrame is not None:
                    self.onFrame(self, body)
        del buf[:pos]

    def connectionLost(self, reason):
        self.lost = True
        self.lostAt = getReactor().seconds()
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)

    def write(self, data):
        if not self.lost:
            self.transport.write(data)

    def whenLost(self, seconds, what):
        if self.lost:
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._lostWaiters.remove(d))
        self._lostWaiters.append(d)
        return withDeadline(d, seconds, what)

    def abort(self):
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()

    def messages(self):
        return [json.loads(body) for body in self.frames]


class FloodPeer(Peer):
    """
    One of thousands of connections: asks an echo test at once, so the
    node either answers (it accepted the link) or drops it (refused).
    """

    serial = 0

    def connectionMade(self):
        Peer.connectionMade(self)
        FloodPeer.serial += 1
        self.write(frame(request("FLOOD", FloodPeer.serial % 999999 + 1, mti="0800", nmi="301")))

    @property
    def accepted(self):
        return bool(self.frames)

    @property
    def resolved(self):
        return self.lost or self.accepted


class Attackers:
    """
    Every hostile connection of a test, aborted in its cleanup.
    """

    def __init__(self, testCase, port):
        self.port = port
        self.peers = []
        self.connectFailures = []
        testCase.addCleanup(self.abortAll)

    @defer.inlineCallbacks
    def connect(self, peers, seconds=15.0):
        """
        Connect every peer in C{peers} at once; fire with those that
        connected (the rest are in L{connectFailures}).
        """
        reactor = getReactor()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=10)
        self.peers.extend(peers)
        attempts = [connectProtocol(endpoint, peer) for peer in peers]
        results = yield withDeadline(
            defer.DeferredList(attempts, consumeErrors=True), seconds, "%d connections" % (len(peers),)
        )
        connected = []
        for peer, (ok, value) in zip(peers, results):
            if ok:
                connected.append(peer)
            else:
                self.connectFailures.append(value)
        return connected

    def abortAll(self):
        waits = []
        for peer in self.peers:
            if peer.transport is not None and not peer.lost:
                peer.abort()
                waits.append(peer.whenLost(5, "an attacker to go"))
        return defer.DeferredList(waits, consumeErrors=True)


class Prober:
    """
    The well-behaved platform's steady traffic: an echo test or a balance
    inquiry every C{interval} seconds, each with its own timeout, at most
    C{maxOutstanding} at once. Records every round trip.
    """

    def __init__(self, service, interval=0.05, timeout=5.0, maxOutstanding=40):
        self.service = service
        self.timeout = timeout
        self.maxOutstanding = maxOutstanding
        self.latencies = []
        self.failures = []
        self.skipped = 0
        self.outstanding = 0
        self._n = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = getReactor()
        self._interval = interval

    def start(self):
        self._loop.start(self._interval, now=True)

    def _tick(self):
        if self.outstanding >= self.maxOutstanding:
            self.skipped += 1
            return
        self._n += 1
        if self._n % 2:
            message = {"mti": "0800", "nmi": "301"}
        else:
            message = {"mti": "0200", "proc": "300000", "pan": PAN}
        started = getReactor().seconds()
        self.outstanding += 1
        d = self.service.request(message, timeout=self.timeout)
        d.addCallbacks(self._answered, self._failed, (started,), None, (message,))

    def _answered(self, answer, started):
        self.outstanding -= 1
        if answer.get("resp") != "00":
            self.failures.append("answered %r" % (answer.get("resp"),))
        self.latencies.append(getReactor().seconds() - started)

    def _failed(self, failure, message):
        self.outstanding -= 1
        self.failures.append("%s: %s" % (message.get("mti"), failure.getErrorMessage()))

    @defer.inlineCallbacks
    def stop(self):
        if self._loop.running:
            self._loop.stop()
        yield waitUntil(lambda: self.outstanding == 0, self.timeout + 2, "the prober's last answers")

    def worst(self):
        return max(self.latencies) if self.latencies else None


class _GoodPlatform:
    """
    A well-behaved in-test platform linked to a payment process, whose
    link must stay up and ready throughout.
    """

    @defer.inlineCallbacks
    def goodPlatform(self, port, **options):
        options.setdefault("heartbeat", 1)
        options.setdefault("idle_timeout", 5)
        options.setdefault("timeout", 5)
        service = PlatformService(["127.0.0.1:%d" % (port,)], connect_timeout=5, **options)
        events = []
        service.observeLinks(lambda event, link, slot: events.append((event, link)))
        service.startService()
        self.addCleanup(service.stopService)
        link = yield withDeadline(service.whenReady(), 10, "the good platform to sign on")
        service.events = events
        return service, link

    def assertStayedReady(self, service, link):
        """
        The good platform's link is the one it started with, still ready,
        and never went down or reconnected.
        """
        factory = service.factories[0]
        self.assertIs(factory.link, link)
        self.assertEqual(link.state, "ready")
        self.assertEqual(factory.reconnects, 0)
        bad = [event for event, l in service.events if event in ("lost", "not-ready", "ejected", "degraded")]
        self.assertEqual(bad, [], "the good platform's link changed state")

    def probe(self, service):
        """
        Start a L{Prober} on C{service}, stopped in cleanup at the latest.
        """
        prober = Prober(service)
        prober.start()
        self.addCleanup(prober.stop)
        return prober

    @defer.inlineCallbacks
    def finishProbing(self, prober, least=20):
        """
        Once the prober has at least C{least} answers, stop it: none may
        have failed, none may have taken too long.
        """
        yield waitUntil(lambda: len(prober.latencies) >= least or prober.failures, 10, "%d answers" % (least,))
        yield prober.stop()
        self.assertEqual(prober.failures, [], "the good platform's requests failed")
        self.assertGreaterEqual(len(prober.latencies), least)
        self.assertLess(prober.worst(), WORST_LATENCY)


class HostilePeerTests(_GoodPlatform, ReactorTestCase):
    """
    One payment process under every kind of abuse in turn while a good
    platform keeps asking it for answers.
    """

    timeout = 55

    @defer.inlineCallbacks
    def test_attackedNodeKeepsServing(self):
        """
        Thousands of connections from one address (beyond the per-peer
        limit refused, with rate-limited log lines that say what was
        refused), floods of garbage (each connection closed as a protocol
        violation) and slow-drip frames (closed after the frame timeout):
        the good platform is answered within its deadline on the same link
        throughout, and the node's memory stays bounded.
        """
        reactor = getReactor()
        payment, port = yield startPayment(self, *HOSTILE_NODE)
        service, link = yield self.goodPlatform(port)
        ownPort = link.transport.getHost().port
        prober = self.probe(service)
        attackers = Attackers(self, port)
        rssStart = rss(payment)
        mark = payment.mark()

        # -- thousands of connections, first burst --------------------------
        burst1 = yield self.connectionFlood(attackers, 1000)
        firstRefusal = burst1["firstRefusedAt"]
        self.assertIsNotNone(firstRefusal, "nothing was refused")
        # The log checks below count on the whole first flood falling
        # within one report interval of the node's limit log.
        self.assertLess(
            reactor.seconds() - firstRefusal,
            LIMIT_LOG_INTERVAL - 1,
            "the first flood took too long for the rate-limit check",
        )
        # Our link holds one of the 200 slots of 127.0.0.1.
        self.assertEqual(len(burst1["accepted"]), 199)
        self.assertEqual(len(burst1["refused"]), 1000 - 199)
        rssFlood = rss(payment)
        yield self.release(payment, burst1["accepted"])

        # -- garbage on many connections ------------------------------------
        rng = random.Random(20240605)
        garbage = [Peer(ascii4=False) for _ in range(100)]
        connected = yield attackers.connect(garbage)
        self.assertEqual(len(connected), 100)
        sentAt = {}
        for i, peer in enumerate(garbage):
            peer.write(garbageFor(i, rng))
            sentAt[peer] = reactor.seconds()

        # -- slow drip, started while the garbage is being dealt with -------
        drips = [Peer(ascii4=False) for _ in range(20)]
        connected = yield attackers.connect(drips)
        self.assertEqual(len(connected), 20)
        dripper = Dripper(drips)
        dripper.start()
        self.addCleanup(dripper.stop)

        yield withDeadline(
            defer.gatherResults([p.whenLost(10, "a garbage connection to close") for p in garbage]),
            12,
            "every garbage connection closed",
        )
        slowest = max(p.lostAt - sentAt[p] for p in garbage)
        report("garbage: %d connections, slowest close %.3fs", len(garbage), slowest)
        # At once: well before the frame timeout (2 s) could be the reason.
        self.assertLess(slowest, 1.5)
        violation = r"protocol violation from 127\.0\.0\.1:(\d+): header .* is not four decimal digits; closing"
        yield waitUntil(
            lambda: {p.port for p in garbage} <= portsIn(payment, violation, mark),
            5,
            "a protocol violation logged for every garbage connection",
        )

        yield withDeadline(
            defer.gatherResults([p.whenLost(10, "a slow-drip connection to close") for p in drips]),
            12,
            "every slow-drip connection closed",
        )
        dripper.stop()
        held = [p.lostAt - p.firstByteAt for p in drips]
        report("slow drip: %d connections closed after %.2f-%.2fs (frame timeout 2s)", len(drips), min(held), max(held))
        self.assertGreaterEqual(min(held), 1.5)
        self.assertLess(max(held), 4.0)
        # Not one of them got its frame through.
        self.assertTrue(all(p.written < len(p.data) for p in drips))
        incomplete = r"protocol violation from 127\.0\.0\.1:(\d+): frame incomplete after 2\.\ds"
        yield waitUntil(
            lambda: {p.port for p in drips} <= portsIn(payment, incomplete, mark),
            5,
            "a frame-timeout violation logged for every slow drip",
        )

        # Every garbage and drip link forgotten: their slots are free.
        yield self.release(payment, garbage + drips)

        # -- second burst, once the limit log may report again --------------
        yield pause(max(0.0, firstRefusal + LIMIT_LOG_INTERVAL + 0.5 - reactor.seconds()))
        burst2 = yield self.connectionFlood(attackers, 1000)
        self.assertEqual(len(burst2["accepted"]), 199)
        self.assertEqual(len(burst2["refused"]), 1000 - 199)
        rssEnd = rss(payment)
        yield self.release(payment, burst2["accepted"])

        # -- what the node said ------------------------------------------------
        refusedLines = payment.find(
            r"limit max-links-per-peer hit: refused a connection from 127\.0\.0\.1:(\d+)(.*)$", mark
        )
        refused = burst1["refused"] + burst2["refused"]
        report(
            "connection flood: 2000 connections, %d accepted, %d refused, %d connect failures, "
            "%d 'limit max-links-per-peer hit' lines",
            len(burst1["accepted"]) + len(burst2["accepted"]),
            len(refused),
            len(attackers.connectFailures),
            len(refusedLines),
        )
        for m in refusedLines:
            report("  %s", m.string.split("] ", 1)[-1])
        self.assertEqual(attackers.connectFailures, [])
        # Rate-limited: a handful of lines for 1,602 refusals, each either
        # a refusal or a count of those since the last report; what was
        # reported adds up to no more than what was refused, and covers
        # the whole first flood by the time the second one is over.
        refusedPorts = {p.port for p in refused}
        for m in refusedLines:
            self.assertIn(int(m.group(1)), refusedPorts)
        tails = payment.find(r"limit max-links-per-peer hit: refused (\d+) more", mark)
        self.assertGreaterEqual(len(refusedLines), 1)
        self.assertLessEqual(len(refusedLines) + len(tails), 4)
        counted = sum(
            1 + int(re.search(r"\(and (\d+) more", m.group(2)).group(1)) if "more" in m.group(2) else 1
            for m in refusedLines
        ) + sum(int(m.group(1)) for m in tails)
        self.assertLessEqual(counted, len(refused))
        self.assertGreaterEqual(counted, len(burst1["refused"]))
        self.assertEqual(payment.find(r"limit max-links hit", mark), [])

        report(
            "payment RSS: %.1f MB before, %.1f MB after the first flood, %.1f MB at the end (growth %.1f MB)",
            rssStart / 1e6,
            rssFlood / 1e6,
            rssEnd / 1e6,
            (rssEnd - rssStart) / 1e6,
        )
        self.assertLess(rssEnd - rssStart, RSS_GROWTH_LIMIT)

        yield self.finishProbing(prober, least=100)
        report(
            "good platform: %d answers, worst %.1f ms, none failed",
            len(prober.latencies),
            prober.worst() * 1000,
        )
        self.assertStayedReady(service, link)
        # The node never refused or dropped the good platform.
        self.assertNotIn(ownPort, refusedPorts)
        self.assertEqual(payment.find(r"127\.0\.0\.1:%d lost" % (ownPort,), mark), [])
        self.assertEqual(payment.find(r"Traceback|Unhandled"), [])
        self.assertTrue(payment.running)

    @defer.inlineCallbacks
    def connectionFlood(self, attackers, total, wave=50):
        """
        Open C{total} connections in waves of C{wave}; each asks an echo
        test at once. Accepted ones are kept alive (idle queries every
        second); refused ones are dropped by the node. Fire with the
        accepted and refused peers and when the first refusal was seen.
        """
        accepted = []
        refused = []
        firstRefusedAt = None
        keepAlive = task.LoopingCall(lambda: [p.write(b"0000") for p in accepted if not p.lost])
        keepAlive.clock = getReactor()
        keepAlive.start(1.0, now=False)
        self.addCleanup(lambda: keepAlive.running and keepAlive.stop())
        for start in range(0, total, wave):
            peers = [FloodPeer() for _ in range(min(wave, total - start))]
            connected = yield attackers.connect(peers)
            yield waitUntil(
                lambda: all(p.resolved for p in connected), 10, "the node to answer or drop every connection"
            )
            for p in connected:
                if p.accepted:
                    accepted.append(p)
                else:
                    refused.append(p)
                    if firstRefusedAt is None or p.lostAt < firstRefusedAt:
                        firstRefusedAt = p.lostAt
        keepAlive.stop()
        # An accepted link is never dropped while kept alive.
        self.assertEqual([p for p in accepted if p.lost], [])
        return {"accepted": accepted, "refused": refused, "firstRefusedAt": firstRefusedAt}

    @defer.inlineCallbacks
    def release(self, payment, peers):
        """
        Close C{peers} and wait until the node has forgotten them (logged
        each link lost), so their slots are free again.
        """
        for p in peers:
            p.abort()
        ports = {p.port for p in peers}
        yield waitUntil(
            lambda: ports <= portsIn(payment, r"link 127\.0\.0\.1:(\d+) lost"),
            10,
            "the node to forget %d closed links" % (len(ports),),
        )


#: L{tvlink.link.limits.LimitLog.interval}: seconds between two reports of a limit.
LIMIT_LOG_INTERVAL = 10.0


def garbageFor(i, rng):
    """
    Garbage for connection C{i}: random bytes, and things that are not an
    ascii4 header but might be sent to the link's port by mistake or
    malice. Never starts with four digits (that would be a frame).
    """
    fixed = [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello
        b"12ab{}",
        b"-001{",
        b" 123",
        b"+100",
        b"\x00\x00\x00\x10" + b"x" * 16,  # a bin4 header
        "١٢٣٤".encode("utf-8"),  # Arabic-Indic digits
        b"\xff" * 4096,
    ]
    if i < len(fixed):
        return fixed[i]
    data = bytes(rng.getrandbits(8) for _ in range(rng.randint(4, 3000)))
    # A non-digit among the first four bytes.
    spot = rng.randrange(4)
    return data[:spot] + bytes([rng.choice(b"abcxyz\x00\x80\xff {")]) + data[spot + 1 :]


class Dripper:
    """
    Slow-drip frames: every half second, one more byte on each
    connection. Even peers send a whole header then drip the body; odd
    peers drip the header itself. At most L{rounds} ticks.
    """

    rounds = 40
    interval = 0.5
    body = b'{"mti":"0800","nmi":"301","sender":"DRIP",' + b'"x":"' + b"y" * 40 + b'"}'

    def __init__(self, peers):
        self.peers = peers
        self.ticks = 0
        for i, p in enumerate(peers):
            p.data = b"%04d" % (len(self.body),) + self.body
            p.written = 4 if i % 2 == 0 else 0
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = getReactor()

    def start(self):
        now = getReactor().seconds()
        for p in self.peers:
            if p.written:
                p.write(p.data[: p.written])
                p.firstByteAt = now
        self.loop.start(self.interval, now=False)

    def tick(self):
        self.ticks += 1
        if self.ticks > self.rounds:
            self.stop()
            return
        now = getReactor().seconds()
        for p in self.peers:
            if not p.lost and p.written < len(p.data):
                if not p.written:
                    p.firstByteAt = now
                p.write(p.data[p.written : p.written + 1])
                p.written += 1

    def stop(self):
        if self.loop.running:
            self.loop.stop()


class OversizeHeaderTests(_GoodPlatform, ReactorTestCase):
    """
    Headers announcing more than C{--max-frame} close the connection at
    once, without the node reserving memory for the announced body.
    """

    timeout = 40

    @defer.inlineCallbacks
    def test_oversizeHeaders(self):
        (bin4, bin4Port), (ascii4, ascii4Port) = yield defer.gatherResults(
            [
                # A long frame timeout: a close within a second is the
                # header check, not the partial-frame timer.
                startPayment(self, "--header", "bin4", "--max-frame", "4096", "--frame-timeout", "30",
                             "--heartbeat", "1", "--idle-timeout", "5", name="payment bin4"),
                startPayment(self, "--max-frame", "1000", "--frame-timeout", "30",
                             "--heartbeat", "1", "--idle-timeout", "5", name="payment ascii4"),
            ]
        )
        good4, link4 = yield self.goodPlatform(bin4Port, header="bin4", max_frame=4096)
        goodA, linkA = yield self.goodPlatform(ascii4Port, max_frame=1000)
        probers = [self.probe(good4), self.probe(goodA)]
        rssBefore = rss(bin4)
        mark4, markA = bin4.mark(), ascii4.mark()

        cases = {
            bin4Port: [
                (struct.pack("!I", 1 << 30), 1 << 30),  # 1 GB
                (struct.pack("!I", 0xFFFFFFFF), 0xFFFFFFFF),
                (struct.pack("!I", 4097), 4097),
                # The announced body starting to arrive changes nothing.
                (struct.pack("!I", 1 << 30) + b"\x00" * 65536, 1 << 30),
                # A good frame first, then the oversize header.
                (struct.pack("!I", 0) + struct.pack("!I", 1 << 30), 1 << 30),
            ],
            ascii4Port: [
                (b"9999", 9999),
                (b"1001", 1001),
                (b"9999" + b"{" * 9999, 9999),
                (b"0000" + b"9999", 9999),
            ],
        }
        sent = []
        for port, attacks in cases.items():
            attackers = Attackers(self, port)
            # Ten connections per case, all at once.
            peers = [Peer(ascii4=False) for _ in range(10 * len(attacks))]
            connected = yield attackers.connect(peers)
            self.assertEqual(len(connected), len(peers))
            for i, peer in enumerate(peers):
                data, announced = attacks[i % len(attacks)]
                peer.write(data)
                sent.append((port, peer, announced, getReactor().seconds()))
        yield withDeadline(
            defer.gatherResults([p.whenLost(5, "an oversize header to be refused") for _, p, _, _ in sent]),
            8,
            "every oversize-header connection closed",
        )
        slowest = max(p.lostAt - at for _, p, _, at in sent)
        report("oversize headers: %d connections, slowest close %.3fs", len(sent), slowest)
        self.assertLess(slowest, 1.0)
        for port, child, maximum in ((bin4Port, bin4, 4096), (ascii4Port, ascii4, 1000)):
            mark = mark4 if child is bin4 else markA
            for _, peer, announced, _ in [s for s in sent if s[0] == port]:
                yield child.waitFor(
                    r"protocol violation from 127\.0\.0\.1:%d: frame of %d bytes exceeds the maximum of %d; closing"
                    % (peer.port, announced, maximum),
                    5,
                    after=mark,
                )
        rssAfter = rss(bin4)
        report(
            "bin4 node RSS %.1f MB before, %.1f MB after 50 headers announcing up to 4 GB",
            rssBefore / 1e6,
            rssAfter / 1e6,
        )
        self.assertLess(rssAfter - rssBefore, 20 * 1024 * 1024)
        for prober in probers:
            yield self.finishProbing(prober)
        report("good platforms: worst %.1f ms (bin4), %.1f ms (ascii4)",
               probers[0].worst() * 1000, probers[1].worst() * 1000)
        self.assertStayedReady(good4, link4)
        self.assertStayedReady(goodA, linkA)
        for child in (bin4, ascii4):
            self.assertEqual(child.find(r"Traceback|Unhandled"), [])


class RawLink(Peer):
    """
    A raw signed-on link that can stop reading while it writes.
    """

    @defer.inlineCallbacks
    def signOn(self, sender):
        self.write(frame(request(sender, 999999, mti="0800", nmi="001")))
        yield waitUntil(lambda: self.frames or self.lost, 5, "the sign-on answer")
        [answer] = self.messages()
        self.frames = []
        if answer.get("resp") != "00":
            raise AssertionError("sign-on answered %r" % (answer,))


class PipelineTests(_GoodPlatform, ReactorTestCase):
    """
    Many requests written on one link without reading the answers.
    """

    timeout = 45

    @defer.inlineCallbacks
    def rawLink(self, port, sender):
        attackers = Attackers(self, port)
        [raw] = yield attackers.connect([RawLink()])
        yield raw.signOn(sender)
        return raw

    @defer.inlineCallbacks
    def test_pipelinedBurst(self):
        """
        5,000 balance inquiries written in one go on one link while it does
        not read: every one is answered, once, in order, and the good
        platform is not held up.
        """
        count = 5000
        payment, port = yield startPayment(self, *HOSTILE_NODE)
        service, link = yield self.goodPlatform(port)
        prober = self.probe(service)
        raw = yield self.rawLink(port, "PIPE")
        rssBefore = rss(payment)
        # Stop reading, write everything, let the node answer into its
        # buffers, then read.
        raw.transport.pauseProducing()
        raw.write(b"".join(frame(request("PIPE", n, mti="0200", proc="300000", pan=PAN)) for n in range(1, count + 1)))
        yield pause(1.0)
        raw.transport.resumeProducing()
        yield waitUntil(lambda: len(raw.frames) >= count or raw.lost, 20, "5,000 answers")
        answers = raw.messages()
        self.assertFalse(raw.lost)
        self.assertEqual(len(answers), count)
        self.assertEqual([a["stan"] for a in answers], ["%06d" % n for n in range(1, count + 1)])
        self.assertEqual({(a["mti"], a["resp"]) for a in answers}, {("0210", "00")})
        rssAfter = rss(payment)
        yield self.finishProbing(prober)
        report(
            "pipelined burst: %d requests answered, node RSS %.1f -> %.1f MB, good platform worst %.1f ms",
            count, rssBefore / 1e6, rssAfter / 1e6, prober.worst() * 1000,
        )
        self.assertStayedReady(service, link)

    @defer.inlineCallbacks
    def test_beyondMaxInFlightAnswered91(self):
        """
        With a handler that answers later (the SQLite ledger), requests
        beyond C{--max-in-flight} on one link are answered C{91} at once,
        the node says so once in its log, and every request is answered.
        """
        limit, count = 20, 200
        payment, port = yield startPayment(
            self, "--ledger", "sqlite:ledger.db", "--max-in-flight", str(limit), *HOSTILE_NODE
        )
        mark = payment.mark()
        raw = yield self.rawLink(port, "PIPE")
        raw.write(b"".join(frame(request("PIPE", n, mti="0200", proc="300000", pan=PAN)) for n in range(1, count + 1)))
        yield waitUntil(lambda: len(raw.frames) >= count or raw.lost, 15, "every answer")
        answers = raw.messages()
        self.assertEqual(len(answers), count)
        self.assertEqual(sorted(a["stan"] for a in answers), ["%06d" % n for n in range(1, count + 1)])
        busy = [a for a in answers if a["resp"] == "91"]
        handled = [a for a in answers if a["resp"] != "91"]
        report("max-in-flight %d: %d pipelined requests, %d answered 91, %d handled", limit, count, len(busy), len(handled))
        self.assertGreaterEqual(len(busy), count - 4 * limit)
        self.assertGreaterEqual(len(handled), limit)
        line = yield payment.waitFor(
            r"limit max-in-flight hit: refused request 0200 PIPE/(\d+)/0101000000 \(answered 91\) "
            r"from 127\.0\.0\.1:%d" % (raw.port,),
            5,
            after=mark,
        )
        self.assertGreater(int(line.group(1)), limit)
        self.assertEqual(len(payment.find(r"limit max-in-flight hit", mark)), 1)
        self.assertFalse(raw.lost)

    @defer.inlineCallbacks
    def test_peerThatNeverReads(self):
        """
        A peer that writes requests and never reads its answers must not
        make the node buffer answers without bound: the node should stop
        reading from it (or drop it) once its output to that peer backs
        up.
        """
        payment, port = yield startPayment(self, *HOSTILE_NODE)
        raw = yield self.rawLink(port, "DEAF")
        raw.transport.pauseProducing()
        before = rss(payment)
        echo = frame(request("DEAF", 1, mti="0800", nmi="301"))
        # About 40 MB of echo tests, each answered with a frame of the
        # same size: written in chunks the reactor can interleave.
        chunk = echo * 5000
        for _ in range(100):
            raw.write(chunk)
            yield pause(0)
        yield pause(3.0)
        grown = rss(payment) - before
        report("a peer that never reads: node RSS grew %.1f MB", grown / 1e6)
        self.assertLess(grown, 20 * 1024 * 1024)


class RefusalReportTests(ReactorTestCase):
    """
    What a node refused is in its log even when the flood stops.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_lastRefusalsReported(self):
        """
        Refusals after the first report of a flood are counted and the
        count is logged within the report interval, even if no further
        refusal comes to carry it.
        """
        payment, port = yield startPayment(self, "--max-links-per-peer", "2", "--heartbeat", "1")
        mark = payment.mark()
        attackers = Attackers(self, port)
        holders = yield attackers.connect([FloodPeer(), FloodPeer()])
        yield waitUntil(lambda: all(p.accepted for p in holders), 5, "two links accepted")
        keepAlive = task.LoopingCall(lambda: [p.write(b"0000") for p in holders])
        keepAlive.clock = getReactor()
        keepAlive.start(1.0)
        self.addCleanup(lambda: keepAlive.running and keepAlive.stop())
        flood = yield attackers.connect([FloodPeer() for _ in range(30)])
        yield waitUntil(lambda: all(p.lost for p in flood), 5, "30 connections refused")
        yield payment.waitFor(
            # However a fix words it: the limit, and the 29 refusals after
            # the first report.
            r"max-links-per-peer.*\b29\b",
            LIMIT_LOG_INTERVAL + 3,
            after=mark,
        )
