"""
Integration tests of multi-point load-balanced access: three real payment
processes (C{twistd tvlink payment}) on 127.0.0.1 and an in-test
L{tvlink.PlatformService} over them, on the real reactor.

Each test starts its own children (killed in cleanup), lets the OS pick
every port, keeps a bounded number of requests in flight, and waits with
deadlines; nothing sleeps. Which payment node a request went to is read
from the platform's own per-slot counters (the demo handler's answers do
not say who answered). Run with C{python -m pytest
tests/platform/test_pool_integration.py} or C{python -m twisted.trial
tests.platform.test_pool_integration}.
"""

from twisted.internet import defer
from twisted.logger import globalLogPublisher

from tests.processes import (
    ReactorTestCase,
    getReactor,
    pause,
    startPayment,
    waitUntil,
    withDeadline,
)
from tvlink import LinkLost, NoLinkAvailable, PlatformService, RequestTimeout
from tvlink.testing.faultproxy import FaultProxy

HEARTBEAT = 0.5
IDLE_TIMEOUT = 3.0
TIMEOUT = 5.0

#: The payment children's timers.
PAYMENT_ARGS = ("--heartbeat", str(HEARTBEAT), "--idle-timeout", str(IDLE_TIMEOUT))

#: Requests that move no money and that the demo handler answers C{00}
#: however often it is asked: echo tests, and balance inquiries over many
#: cards.
ECHO = {"mti": "0800", "nmi": "301"}
CARDS = ["62220200000%08d" % (n,) for n in range(1, 101)]


def message(n):
    if n % 2:
        return ECHO
    return {"mti": "0200", "proc": "300000", "pan": CARDS[(n // 2) % len(CARDS)]}


class Call:
    """
    One request of a L{Traffic}: when it was issued, which slot it was
    written to (C{None}: not written at once, it waited for a link or
    failed before it was sent), when it ended and how.
    """

    __slots__ = ("n", "issuedAt", "slot", "endedAt", "answer", "error")

    def __init__(self, n, issuedAt):
        self.n = n
        self.issuedAt = issuedAt
        self.slot = None
        self.endedAt = None
        self.answer = None
        self.error = None

    @property
    def ok(self):
        answer = self.answer
        return answer is not None and answer.get("resp") == "00"

    def describe(self):
        outcome = (
            "answered %s" % (self.answer.get("resp"),)
            if self.answer is not None
            else "%s: %s" % (type(self.error).__name__, self.error)
            if self.error is not None
            else "pending"
        )
        return "request %d on slot %s issued at %.3f: %s" % (self.n, self.slot, self.issuedAt, outcome)


class Traffic:
    """
    Keep C{depth} requests in flight through C{service} until C{total}
    have been issued, C{seconds} have passed or L{stop} is called. Every
    request is kept as a L{Call}.
    """

    def __init__(self, service, depth, total=200000, seconds=45.0):
        self.service = service
        self.clock = service.reactor
        self.depth = depth
        self.total = total
        self.deadline = self.clock.seconds() + seconds
        self.calls = []
        self.outstanding = 0
        self.stopped = False
        self._filling = False

    def start(self):
        self._fill()
        return self

    def stop(self):
        self.stopped = True

    def _fill(self):
        # A request may end before request() returns (and call _fill
        # again): loop here instead of recursing.
        if self._filling:
            return
        self._filling = True
        try:
            while (
                not self.stopped
                and self.outstanding < self.depth
                and len(self.calls) < self.total
                and self.clock.seconds() < self.deadline
            ):
                self._issue()
        finally:
            self._filling = False

    def _issue(self):
        factories = self.service.factories
        before = [f.slotCounters["requestsOut"] for f in factories]
        call = Call(len(self.calls), self.clock.seconds())
        self.calls.append(call)
        self.outstanding += 1
        d = self.service.request(message(call.n))
        for slot, f in enumerate(factories):
            if f.slotCounters["requestsOut"] != before[slot]:
                call.slot = slot
        d.addCallbacks(self._answered, self._failed, (call,), None, (call,))

    def _answered(self, answer, call):
        call.answer = answer
        self._ended(call)

    def _failed(self, failure, call):
        call.error = failure.value
        self._ended(call)

    def _ended(self, call):
        call.endedAt = self.clock.seconds()
        self.outstanding -= 1
        self._fill()

    def answered(self):
        return sum(1 for c in self.calls if c.answer is not None)

    def finish(self, seconds=TIMEOUT + 5):
        """
        Stop issuing; fire once every request has ended (fail after
        C{seconds}: a request that never ends is a hang).
        """
        self.stop()
        return waitUntil(lambda: self.outstanding == 0, seconds, "every request to end")


class _PoolMixin:
    """
    Three payment children and an in-test platform over them.
    """

    timeout = 60

    @defer.inlineCallbacks
    def startPayments(self, count=3):
        started = yield defer.gatherResults(
            [startPayment(self, *PAYMENT_ARGS, name="payment%d" % (i,)) for i in range(count)],
            consumeErrors=True,
        )
        return [child for child, port in started], [port for child, port in started]

    @defer.inlineCallbacks
    def startProxy(self, port):
        proxy = FaultProxy("127.0.0.1", port, reactor=getReactor())
        yield proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    @defer.inlineCallbacks
    def startPlatform(self, ports, **options):
        """
        A platform over C{127.0.0.1:PORT} for each of C{ports}, all ready;
        its link events are kept in C{self.events} as C{(time, event,
        slot)}.
        """
        options.setdefault("heartbeat", HEARTBEAT)
        options.setdefault("idle_timeout", IDLE_TIMEOUT)
        options.setdefault("timeout", TIMEOUT)
        options.setdefault("connect_timeout", 5)
        service = PlatformService(
            ["127.0.0.1:%d" % (port,) for port in ports], reactor=getReactor(), **options
        )
        slots = {f: i for i, f in enumerate(service.factories)}
        self.events = []
        service.observeLinks(
            lambda event, link, factory: self.events.append(
                (getReactor().seconds(), event, slots[factory])
            )
        )
        service.startService()

        def stop():
            if service.running:
                return withDeadline(service.stopService(), 30, "the platform service to stop")

        self.addCleanup(stop)
        yield waitUntil(lambda: self.states(service) == ["ready"] * len(ports), 10, "every link ready")
        return service

    def traffic(self, service, depth, total=200000, seconds=45.0):
        """
        A started L{Traffic}, stopped in cleanup (before the service is).
        """
        traffic = Traffic(service, depth, total, seconds)
        self.addCleanup(traffic.stop)
        return traffic.start()

    def states(self, service):
        return [entry["state"] for entry in service.status()]

    def answeredCounts(self, service):
        return [entry["answered"] for entry in service.status()]

    def firstEvent(self, name, slot, after):
        for when, event, which in self.events:
            if event == name and which == slot and when >= after:
                return when
        return None

    def logEvents(self, name):
        """
        Keep the log events whose C{link_event} is C{name} while the test
        runs; return the list they are kept in.
        """
        seen = []

        def observer(event):
            if event.get("link_event") == name:
                seen.append((getReactor().seconds(), event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return seen

    @defer.inlineCallbacks
    def spread(self, service, total, depth, live, even=None):
        """
        Send C{total} requests, C{depth} in flight, and check every one is
        answered C{00}, that only the slots in C{live} answered, and that
        the slots in C{even} (default: C{live}) each answered within 10%
        of their fair share of what C{even} answered together. Fire with
        the per-slot answered deltas.
        """
        even = live if even is None else even
        before = self.answeredCounts(service)
        traffic = self.traffic(service, depth, total, seconds=40)
        yield waitUntil(
            lambda: len(traffic.calls) == total and traffic.outstanding == 0,
            45,
            "%d requests to be answered" % (total,),
        )
        failed = [c.describe() for c in traffic.calls if not c.ok]
        self.assertEqual(failed, [], "%d of %d requests failed" % (len(failed), total))
        after = self.answeredCounts(service)
        deltas = [b - a for a, b in zip(before, after)]
        sent = [sum(1 for c in traffic.calls if c.slot == slot) for slot in range(len(deltas))]
        self.assertEqual(deltas, sent, "answered counters disagree with where requests went")
        self.assertEqual(sum(deltas), total)
        for slot, delta in enumerate(deltas):
            if slot in live:
                self.assertGreater(delta, 0, "slot %d took no traffic (all: %s)" % (slot, deltas))
            else:
                self.assertEqual(delta, 0, "slot %d is out but answered (all: %s)" % (slot, deltas))
        fair = sum(deltas[slot] for slot in even) / max(1, len(even))
        for slot in even:
            self.assertTrue(
                abs(deltas[slot] - fair) <= 0.10 * fair,
                "slot %d answered %d, outside 10%% of its fair share %.0f (all: %s)"
                % (slot, deltas[slot], fair, deltas),
            )
        return deltas


class KillTests(_PoolMixin, ReactorTestCase):
    """
    One of three payment processes dies (SIGKILL) under load.
    """

    @defer.inlineCallbacks
    def test_killOneUnderLoad(self):
        """
        The requests in flight on the killed node fail with L{LinkLost}
        within a second; every request issued ends, none issued after the
        kill fails; then 3,000 requests spread evenly over the two left.
        The node is frozen (SIGSTOP) for 0.3 s before the SIGKILL, so no
        answer of its is still on the way when it dies.
        """
        reactor = getReactor()
        children, ports = yield self.startPayments()
        service = yield self.startPlatform(ports)

        traffic = self.traffic(service, depth=24)
        yield waitUntil(lambda: traffic.answered() >= 600, 15, "600 answers before the kill")
        self.assertEqual(
            sorted({c.slot for c in traffic.calls if c.ok}), [0, 1, 2], "not every node took traffic"
        )
        # Freeze the node first, so that what is in flight on it when it is
        # killed is surely unanswered (no answer already on its way back).
        children[0].signal("STOP")
        yield pause(0.3)
        inFlightAtKill = [c for c in traffic.calls if c.slot == 0 and c.endedAt is None]
        self.assertTrue(inFlightAtKill, "nothing in flight on the node about to be killed")
        killAt = reactor.seconds()
        children[0].signal("KILL")
        yield waitUntil(lambda: self.firstEvent("lost", 0, killAt), 2, "the platform to see the loss")
        lostAt = self.firstEvent("lost", 0, killAt)
        status = yield children[0].whenEnded(5)
        self.assertEqual(status, -9)
        yield waitUntil(
            lambda: all(c.endedAt is not None for c in inFlightAtKill), 2, "in-flight requests to fail"
        )

        # Keep the load on a little longer, then let everything end.
        mark = traffic.answered()
        yield waitUntil(lambda: traffic.answered() >= mark + 600, 15, "600 answers after the kill")
        yield traffic.finish()

        self.assertLess(lostAt - killAt, 1.0)
        for call in inFlightAtKill:
            self.assertIsInstance(call.error, LinkLost, call.describe())
            self.assertLess(call.endedAt - killAt, 1.0, call.describe())
        unended = [c.describe() for c in traffic.calls if c.endedAt is None]
        self.assertEqual(unended, [])
        failed = [c for c in traffic.calls if not c.ok]
        # Only what was written to the dead node before the kill failed,
        # and only with LinkLost; nothing issued after the kill failed.
        self.assertEqual(
            [c.describe() for c in failed if not (c.slot == 0 and c.issuedAt <= killAt)], []
        )
        self.assertEqual([c.describe() for c in failed if not isinstance(c.error, LinkLost)], [])
        afterKill = [c for c in traffic.calls if c.issuedAt > killAt]
        self.assertGreaterEqual(len(afterKill), 600)
        self.assertEqual([c.describe() for c in afterKill if c.slot == 0], [])

        self.assertEqual(self.states(service)[1:], ["ready", "ready"])
        self.assertNotEqual(self.states(service)[0], "ready")
        # One at a time, so the share of each node does not hang on how
        # fast the scheduler lets it answer (with several in flight,
        # least-pending rightly favours whichever answers sooner).
        yield self.spread(service, 3000, depth=1, live={1, 2})


class BlackholeTests(_PoolMixin, ReactorTestCase):
    """
    One of three payment nodes goes silent behind a fault proxy.
    """

    @defer.inlineCallbacks
    def test_blackholedNodeDeclaredDeadAtIdleTimeout(self):
        """
        The platform declares the black-holed link dead at the idle
        timeout; meanwhile requests keep being answered by the other two;
        those stuck on the silent link fail when it is declared dead
        (never hang), and none goes to it afterwards.
        """
        reactor = getReactor()
        children, ports = yield self.startPayments()
        proxy = yield self.startProxy(ports[0])
        timeouts = self.logEvents("heartbeat-timeout")
        service = yield self.startPlatform([proxy.port] + ports[1:])
        proxied = "127.0.0.1:%d" % (proxy.port,)

        traffic = self.traffic(service, depth=12)
        yield waitUntil(lambda: traffic.answered() >= 300, 15, "300 answers before the black hole")
        self.assertEqual(sorted({c.slot for c in traffic.calls if c.ok}), [0, 1, 2])

        silentAt = reactor.seconds()
        proxy.setMode("blackhole")
        yield waitUntil(
            lambda: [t for t, e in timeouts if e.get("peer") == proxied],
            IDLE_TIMEOUT + 3,
            "the platform to declare the black-holed link dead",
        )
        deadAt = [t for t, e in timeouts if e.get("peer") == proxied][0]
        yield waitUntil(lambda: self.states(service)[0] != "ready", 1, "the slot to leave ready")
        # Run on after the verdict: nothing goes to the dead slot.
        mark = traffic.answered()
        yield waitUntil(lambda: traffic.answered() >= mark + 300, 15, "300 answers after the verdict")
        yield traffic.finish()

        delay = deadAt - silentAt
        self.assertGreaterEqual(delay, IDLE_TIMEOUT - 0.5)
        self.assertLessEqual(delay, IDLE_TIMEOUT + 1.0)
        self.assertEqual([c.describe() for c in traffic.calls if c.endedAt is None], [])

        # The two live nodes kept answering throughout the silence.
        during = [c for c in traffic.calls if c.ok and silentAt < c.issuedAt and c.endedAt < deadAt]
        self.assertGreaterEqual(len(during), 100, "too few answers while the node was silent")
        self.assertEqual({c.slot for c in during}, {1, 2})

        # What failed had been written to the silent link, and failed with
        # LinkLost when it was declared dead (or at its own timeout).
        failed = [c for c in traffic.calls if not c.ok]
        self.assertTrue(failed, "nothing was stuck on the black-holed link")
        self.assertEqual([c.describe() for c in failed if c.slot != 0], [])
        for call in failed:
            self.assertIsInstance(call.error, (LinkLost, RequestTimeout), call.describe())
            self.assertLessEqual(call.endedAt, call.issuedAt + TIMEOUT + 0.5, call.describe())
            self.assertLessEqual(call.endedAt, deadAt + 0.5, call.describe())
        # Least-pending stopped sending to the stuck link well before the
        # verdict: only a handful of requests were caught there.
        self.assertLessEqual(len(failed), traffic.depth)
        self.assertEqual(
            [c.describe() for c in traffic.calls if c.slot == 0 and c.issuedAt > deadAt], []
        )
        self.assertEqual(self.states(service)[1:], ["ready", "ready"])


class RejoinTests(_PoolMixin, ReactorTestCase):
    """
    Nodes that were killed or silenced come back.
    """

    @defer.inlineCallbacks
    def test_killedAndSilencedNodesRejoin(self):
        """
        With one node killed and another black-holed, the third carries
        everything; once the killed one is restarted on its port and the
        proxy passes traffic again, both link up again (reconnecting with
        growing, jittered delays) and take their share.
        """
        reactor = getReactor()
        children, ports = yield self.startPayments()
        proxy = yield self.startProxy(ports[1])
        timeouts = self.logEvents("heartbeat-timeout")
        retries = self.logEvents("retry")
        service = yield self.startPlatform([ports[0], proxy.port, ports[2]])
        killed = "127.0.0.1:%d" % (ports[0],)
        proxied = "127.0.0.1:%d" % (proxy.port,)

        traffic = self.traffic(service, depth=6)
        yield waitUntil(lambda: traffic.answered() >= 200, 15, "200 answers")
        downAt = reactor.seconds()
        children[0].signal("KILL")
        proxy.setMode("blackhole")
        yield children[0].whenEnded(5)
        yield waitUntil(
            lambda: [t for t, e in timeouts if e.get("peer") == proxied],
            IDLE_TIMEOUT + 3,
            "the black-holed link declared dead",
        )
        self.assertTrue(self.firstEvent("lost", 0, downAt))
        self.assertEqual(self.states(service)[2], "ready")
        mark = traffic.answered()
        yield waitUntil(lambda: traffic.answered() >= mark + 200, 10, "the last node to carry on")
        yield traffic.finish()
        after = [c for c in traffic.calls if c.issuedAt > downAt + IDLE_TIMEOUT + 0.5]
        self.assertEqual([c.describe() for c in after if not c.ok or c.slot != 2], [])

        backAt = reactor.seconds()
        again, port = yield startPayment(self, *PAYMENT_ARGS, port=ports[0], name="payment0 (restarted)")
        self.assertEqual(port, ports[0])
        proxy.setMode("pass")
        yield waitUntil(
            lambda: self.states(service) == ["ready"] * 3, 25, "both nodes to link up again"
        )
        self.assertTrue(self.firstEvent("ready", 0, backAt))
        self.assertTrue(self.firstEvent("ready", 1, backAt))
        status = service.status()
        self.assertGreater(status[0]["reconnects"], 0)
        self.assertGreater(status[1]["reconnects"], 0)

        # Backoff: towards the killed node each delay is at least the one
        # before (jitter stays in the upper half of a doubling ceiling),
        # the first within a second; no retry storm.
        delays = [e["delay"] for t, e in retries if e.get("endpoint") == killed and downAt < t < backAt]
        self.assertTrue(delays, "no retries logged towards the killed node")
        self.assertLessEqual(delays[0], 1.0)
        self.assertEqual(delays, sorted(delays), delays)
        self.assertLessEqual(len(delays), 6, delays)

        # Every node takes a share again. How much each gets depends on
        # how fast it answers (least-pending), and node 1 is one hop
        # further away, through the proxy in this process.
        yield self.spread(service, 3000, depth=6, live={0, 1, 2}, even=())
        self.assertEqual(len(again.find(r"platform PLATFORM signed on")), 1)


class DrainTests(_PoolMixin, ReactorTestCase):
    """
    Taking a node out of service, and stopping, over real processes.
    """

    @defer.inlineCallbacks
    def test_drainThenStop(self):
        """
        C{drain(endpoint)} sends nothing new to the node, lets its
        in-flight requests finish, signs off and closes; C{resume} brings
        it back. Stopping the service does the same for every node, with
        requests in flight, and leaves nothing pending.
        """
        reactor = getReactor()
        children, ports = yield self.startPayments()
        # A slow path to node 0, so its requests are surely in flight
        # when the drain begins.
        proxy = yield self.startProxy(ports[0])
        service = yield self.startPlatform([proxy.port] + ports[1:])
        proxy.setMode("delay", seconds=0.3)
        endpoint = "127.0.0.1:%d" % (proxy.port,)

        burst = self.traffic(service, depth=30, total=30)
        inFlight = [c for c in burst.calls if c.slot == 0]
        self.assertTrue(inFlight, "nothing went to node 0")
        self.assertTrue(all(c.endedAt is None for c in inFlight))
        drainAt = reactor.seconds()
        drained = service.drain(endpoint)
        self.assertEqual(self.states(service)[0], "draining")
        more = self.traffic(service, depth=30, total=30)
        self.assertEqual([c.describe() for c in more.calls if c.slot != 1 and c.slot != 2], [])

        yield withDeadline(drained, TIMEOUT + 5, "the drain to finish")
        drainedAt = reactor.seconds()
        yield burst.finish()
        yield more.finish()
        for call in burst.calls + more.calls:
            self.assertTrue(call.ok, call.describe())
        for call in inFlight:
            self.assertLessEqual(call.endedAt, drainedAt, call.describe())
        # They really were in flight: the drain waited for them (0.3 s
        # each way through the proxy).
        self.assertGreaterEqual(drainedAt - drainAt, 0.5)
        yield children[0].waitFor(r"signed off by peer", 5)
        yield children[0].waitFor(r"link 127\.0\.0\.1:\d+ lost", 5)
        self.assertEqual(self.states(service)[0], "drained")
        self.assertTrue(self.firstEvent("drained", 0, drainAt))
        self.assertEqual(service.status()[0]["inFlight"], 0)
        yield self.spread(service, 300, depth=6, live={1, 2}, even=())

        proxy.setMode("pass")
        service.resume(endpoint)
        yield waitUntil(lambda: self.states(service) == ["ready"] * 3, 10, "node 0 back after resume")
        yield self.spread(service, 600, depth=6, live={0, 1, 2}, even=())

        # Stop with requests in flight: they finish, every link signs
        # off, nothing is left pending.
        marks = [child.mark() for child in children]
        burst = self.traffic(service, depth=30, total=30)
        self.assertEqual(burst.outstanding, 30)
        yield withDeadline(service.stopService(), TIMEOUT + 5, "the service to stop")
        yield burst.finish(1)
        for call in burst.calls:
            self.assertTrue(call.ok, call.describe())
        for child, mark in zip(children, marks):
            yield child.waitFor(r"signed off by peer", 5, after=mark)
            yield child.waitFor(r"link 127\.0\.0\.1:\d+ lost", 5, after=mark)
        self.assertEqual(len(service.queue), 0)
        self.assertEqual(service.links(), [])
        self.assertEqual([f.link for f in service.factories], [None, None, None])
        self.assertEqual(set(self.states(service)), {"drained"})
        late = yield service.request(ECHO).addErrback(lambda f: f.value)
        self.assertIsInstance(late, NoLinkAvailable)
