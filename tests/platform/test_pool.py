"""
Tests for multi-point load-balanced access: strategies, the circuit
breaker, the bounded queue, draining, all on a Clock.
"""

from collections import Counter

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.helpers import Events, HoldingHandler, PoolRig, RecordingHandler, purchase
from tvlink.errors import DuplicateKey, LinkLost, NoLinkAvailable, RequestTimeout
from tvlink.link.roundtrips import RoundTrips
from tvlink.platform.breaker import CircuitBreaker
from tvlink.platform.pool import (
    IBalancer,
    LeastPending,
    Primary,
    RequestQueue,
    RoundRobin,
    getBalancer,
)


class FakeLink:
    def __init__(self, name, load=0, group=0):
        self.name = name
        self.load = load
        self.group = group

    def inFlight(self):
        return self.load

    def __repr__(self):
        return self.name


class StrategyTests(SynchronousTestCase):
    def test_least_pending(self):
        a, b, c = FakeLink("a", 3), FakeLink("b", 1), FakeLink("c", 2)
        self.assertEqual([LeastPending().choose([a, b, c]) for _ in range(3)], [b, b, b])

    def test_least_pending_ties_round_robin(self):
        links = [FakeLink(n) for n in "abc"]
        chooser = LeastPending()
        self.assertEqual([chooser.choose(links).name for _ in range(6)], list("abcabc"))

    def test_round_robin_dead_link_share_spreads(self):
        links = [FakeLink(n) for n in "abcd"]
        chooser = RoundRobin()
        counts = Counter(chooser.choose(links).name for _ in range(400))
        self.assertEqual(set(counts.values()), {100})
        live = [links[0], links[2], links[3]]  # b died
        counts = Counter(chooser.choose(live).name for _ in range(300))
        self.assertEqual(counts, {"a": 100, "c": 100, "d": 100})

    def test_primary_groups(self):
        a, b = FakeLink("a", 5, group=0), FakeLink("b", 0, group=1)
        chooser = Primary()
        self.assertEqual(chooser.choose([a, b]), a)
        self.assertEqual(chooser.choose([b]), b)
        a2 = FakeLink("a2", 1, group=0)
        self.assertEqual(chooser.choose([a, a2, b]), a2)

    def test_get_balancer(self):
        self.assertIsInstance(getBalancer("round-robin"), RoundRobin)
        e = self.assertRaises(ValueError, getBalancer, "random")
        self.assertIn("least-pending", str(e))
        custom = RoundRobin()
        self.assertIs(getBalancer(custom), custom)


class RoundTripsTests(SynchronousTestCase):
    def test_percentiles_over_a_window(self):
        r = RoundTrips(size=100)
        self.assertIsNone(r.percentile(50))
        for i in range(1, 101):
            r.add(i / 1000.0)
        self.assertEqual(r.percentile(50), 0.05)
        self.assertEqual(r.percentile(99), 0.099)
        for i in range(100):
            r.add(1.0)
        self.assertEqual(r.percentile(50), 1.0)
        self.assertEqual(len(r), 100)


class BreakerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.draws = [0.5]
        self.breaker = CircuitBreaker(self.clock, eject_after=3, cooldown=30, ramp=10, random=lambda: self.draws[0])

    def test_eject_after_consecutive_timeouts(self):
        b = self.breaker
        self.assertFalse(b.timedOut())
        self.assertTrue(b.degraded)
        b.answered()
        self.assertFalse(b.degraded)
        self.assertFalse(b.timedOut())
        self.assertFalse(b.timedOut())
        self.assertTrue(b.timedOut())
        self.assertEqual(b.state, "ejected")
        self.assertFalse(b.admits())
        b.answered()  # a straggler does not close an ejected breaker
        self.assertEqual(b.state, "ejected")

    def test_ramp(self):
        b = self.breaker
        for _ in range(3):
            b.timedOut()
        b.probeAnswered()
        self.assertEqual(b.state, "recovering")
        self.draws[0] = 0.3
        self.assertFalse(b.admits())  # 5% at first
        self.clock.advance(4)
        self.assertTrue(b.admits())  # 40% > 0.3
        self.draws[0] = 0.5
        self.assertFalse(b.admits())
        self.clock.advance(6)
        self.assertTrue(b.admits())
        self.assertEqual(b.state, "closed")

    def test_timeout_while_recovering_ejects(self):
        b = self.breaker
        for _ in range(3):
            b.timedOut()
        b.probeAnswered()
        self.assertTrue(b.timedOut())
        self.assertEqual(b.ejections, 2)


class QueueTests(SynchronousTestCase):
    def test_bound_refuses_at_once(self):
        q = RequestQueue(Clock(), limit=2)
        q.wait(10)
        q.wait(10)
        e = self.assertRaises(NoLinkAvailable, q.wait, 10)
        self.assertIn("2 requests already waiting", str(e))

    def test_release_gives_remaining_time(self):
        clock = Clock()
        q = RequestQueue(clock, limit=2)
        d = q.wait(10)
        clock.advance(4)
        q.release()
        self.assertEqual(self.successResultOf(d), 6)
        self.assertEqual(len(q), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_expire_and_cancel(self):
        clock = Clock()
        q = RequestQueue(clock, limit=5)
        d1, d2 = q.wait(10), q.wait(20)
        d2.cancel()
        self.assertEqual(len(q), 1)
        clock.advance(10)
        self.failureResultOf(d1, NoLinkAvailable)
        self.failureResultOf(d2)
        self.assertEqual(clock.getDelayedCalls(), [])


class PoolServiceTests(SynchronousTestCase):
    def spread(self, rig, n):
        before = {f.endpoint: f.slotCounters["answered"] for f in rig.service.factories}
        results = []
        for i in range(n):
            rig.service.request(purchase(i + 1)).addBoth(results.append)
            rig.flush()
        self.assertEqual(len(results), n)
        self.assertTrue(all(isinstance(r, dict) and r["resp"] == "00" for r in results))
        return {
            f.endpoint: f.slotCounters["answered"] - before[f.endpoint] for f in rig.service.factories
        }

    def test_all_ready_and_even(self):
        rig = PoolRig()
        self.assertEqual([s["state"] for s in rig.service.status()], ["ready"] * 3)
        counts = self.spread(rig, 300)
        self.assertEqual(set(counts.values()), {100})

    def test_kill_one_in_flight_fail_rest_spread(self):
        handlers = [HoldingHandler(), HoldingHandler(), HoldingHandler()]
        rig = PoolRig(handlers=handlers)
        inflight = [rig.service.request(purchase(i + 1)) for i in range(6)]
        rig.flush()
        rig.kill(7002)
        lost = [d for d in inflight if d.called]
        self.assertEqual(len(lost), 2)
        for d in lost:
            self.failureResultOf(d, LinkLost)
        for h in handlers:
            h.releaseAll()
        rig.flush()
        for d in inflight:
            if d not in lost:
                self.assertEqual(self.successResultOf(d)["resp"], "00")
        for h in handlers:
            h.answer = lambda m: {"resp": "00"}
        counts = self.spread(rig, 200)
        self.assertEqual(counts, {"127.0.0.1:7001": 100, "127.0.0.1:7002": 0, "127.0.0.1:7003": 100})

    def test_queue_until_ready(self):
        rig = PoolRig(ports=(7001,))
        rig.kill(7001)
        d = rig.service.request(purchase())
        self.assertNoResult(d)
        self.assertEqual(len(rig.service.queue), 1)
        # The link comes back: the waiting request goes out on it.
        rig.reactor.advance(1)
        rig.connectPending()
        self.assertEqual(self.successResultOf(d)["resp"], "00")

    def test_queue_bound(self):
        rig = PoolRig(ports=(7001,), max_queued=2)
        rig.kill(7001)
        waiting = [rig.service.request(purchase()) for _ in range(2)]
        refused = rig.service.request(purchase())
        f = self.failureResultOf(refused, NoLinkAvailable)
        self.assertIn("already waiting", str(f.value))
        rig.reactor.advance(40)
        for d in waiting:
            self.failureResultOf(d, NoLinkAvailable)

    def test_timeouts_eject_then_probe_and_ramp(self):
        handlers = [RecordingHandler(), HoldingHandler()]
        rig = PoolRig(
            ports=(7001, 7002), handlers=handlers, balance="round-robin", eject_after=3, cooldown=30, ramp=10, timeout=5
        )
        events = Events(self)
        slot = rig.service.factories[1]
        # Round robin sends every other request to the silent node.
        failures = []
        for i in range(6):
            rig.service.request(purchase(i + 1)).addErrback(failures.append)
            rig.flush()
        rig.advance(5)
        self.assertEqual(len(failures), 3)
        self.assertTrue(all(f.check(RequestTimeout) for f in failures))
        self.assertEqual(slot.stateName(), "ejected")
        self.assertEqual(len(events.named("ejected")), 1)
        self.assertEqual(len(events.named("degraded")), 1)
        # While ejected, everything goes to the healthy node.
        counts = self.spread(rig, 20)
        self.assertEqual(counts["127.0.0.1:7002"], 0)
        # After the cool-down the probe (an echo test, answered by the link
        # itself) succeeds and the node ramps back in.
        rig.advance(30)
        self.assertEqual(slot.stateName(), "recovering")
        handlers[1].answer = lambda m: {"resp": "00"}
        rig.advance(10)
        counts = self.spread(rig, 20)
        self.assertEqual(slot.stateName(), "ready")
        self.assertEqual(counts["127.0.0.1:7002"], 10)

    def test_links_per_endpoint(self):
        rig = PoolRig(ports=(7001, 7002), links_per_endpoint=3)
        self.assertEqual(len(rig.service.readyLinks()), 6)
        self.assertEqual(len(rig.payments[7001].links), 3)
        counts = Counter()
        for f in rig.service.factories:
            counts[f.endpoint] += 1
        self.assertEqual(counts, {"127.0.0.1:7001": 3, "127.0.0.1:7002": 3})

    def test_primary_fails_over_and_back(self):
        rig = PoolRig(ports=(7001, 7002), balance="primary")
        self.assertEqual(self.spread(rig, 10), {"127.0.0.1:7001": 10, "127.0.0.1:7002": 0})
        rig.kill(7001)
        self.assertEqual(self.spread(rig, 10), {"127.0.0.1:7001": 0, "127.0.0.1:7002": 10})
        rig.reactor.advance(1)
        rig.connectPending()
        self.assertEqual(self.spread(rig, 10), {"127.0.0.1:7001": 10, "127.0.0.1:7002": 0})

    def test_comma_groups(self):
        from tvlink.platform.service import PlatformService

        s = PlatformService(["a:1,b:2", "c:3"], balance="primary", reactor=Clock())
        self.assertEqual([f.group for f in s.factories], [0, 0, 1])

    def test_custom_balancer(self):
        @implementer(IBalancer)
        class Last:
            def choose(self, candidates):
                return candidates[-1]

        rig = PoolRig(balance=Last())
        self.assertEqual(self.spread(rig, 5)["127.0.0.1:7003"], 5)

    def test_drain(self):
        handlers = [HoldingHandler(), RecordingHandler()]
        rig = PoolRig(ports=(7001, 7002), handlers=handlers)
        events = Events(self)
        first = rig.service.request(purchase())  # goes to 7001 and is held
        rig.flush()
        self.assertEqual(len(handlers[0].held), 1)
        drained = rig.service.drain("127.0.0.1:7001")
        rig.flush()
        self.assertNoResult(drained)
        self.assertEqual(rig.service.status()[0]["state"], "draining")
        # New requests avoid the draining node.
        self.assertEqual(self.spread(rig, 4), {"127.0.0.1:7001": 0, "127.0.0.1:7002": 4})
        paymentLink = list(rig.payments[7001].links)[0]
        handlers[0].releaseAll()
        rig.flush()
        self.assertEqual(self.successResultOf(first)["resp"], "00")
        self.successResultOf(drained)
        self.assertTrue(paymentLink.signedOff)
        self.assertEqual(paymentLink.state, "lost")
        self.assertEqual(rig.service.status()[0]["state"], "drained")
        self.assertEqual(len(events.named("drained")), 1)
        # Nothing reconnects a drained node until it is resumed.
        rig.reactor.advance(120)
        self.assertEqual(len(rig.reactor.tcpClients), 2)
        rig.service.resume("127.0.0.1:7001")
        rig.connectPending()
        self.assertEqual(rig.service.status()[0]["state"], "ready")

    def test_duplicate_key_across_links(self):
        rig = PoolRig(handlers=[HoldingHandler(), HoldingHandler(), HoldingHandler()])
        m = dict(purchase(), sender="PLATFORM", stan="000321", time="1125120000")
        first = rig.service.request(m)
        self.assertNoResult(first)
        self.failureResultOf(rig.service.request(m), DuplicateKey)
        rig.flush()
        held = sum(len(h.held) for h in rig.payments and [f.handler for f in rig.payments.values()])
        self.assertEqual(held, 1)

    def test_resume_while_draining_keeps_one_link(self):
        handlers = [HoldingHandler(), RecordingHandler()]
        rig = PoolRig(ports=(7001, 7002), handlers=handlers)
        first = rig.service.request(purchase())
        rig.flush()
        drained = rig.service.drain("127.0.0.1:7001")
        rig.service.resume("127.0.0.1:7001")
        self.assertEqual(len(rig.reactor.tcpClients), 2)  # not yet
        handlers[0].releaseAll()
        rig.flush()
        self.successResultOf(first)
        self.successResultOf(drained)
        rig.reactor.advance(0)
        rig.connectPending()
        self.assertEqual(len(rig.reactor.tcpClients), 3)
        self.assertEqual(rig.service.status()[0]["state"], "ready")
        self.assertEqual(len(rig.service.factories[0].links), 1)

    def test_drain_unknown(self):
        rig = PoolRig(ports=(7001,))
        self.failureResultOf(rig.service.drain("127.0.0.1:9"), ValueError)

    def test_stop_leaves_nothing_pending(self):
        rig = PoolRig(ports=(7001, 7002))
        self.spread(rig, 4)
        stopped = rig.service.stopService()
        rig.flush()
        self.successResultOf(stopped)
        self.assertEqual(rig.service.links(), [])
        self.assertEqual(rig.reactor.getDelayedCalls(), [])
