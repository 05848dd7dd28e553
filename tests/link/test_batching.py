"""
Tests for how a link handles a read that brings many frames: at most
C{max_batch} per reactor turn, one write per batch, reading paused until
the rest is handled; and for what the platform does with the room that
answers free.
"""

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import Events, HoldingHandler, Pair, PoolRig, RecordingHandler, SingleLink, frame, frames, purchase
from tvlink.errors import LinkLost


def request(n):
    return {"mti": "0200", "proc": "000000", "sender": "P", "stan": "%06d" % (n,), "time": "0101000000"}


class CountingWrites:
    """
    Wrap a transport's C{write} to count the calls.
    """

    def __init__(self, transport):
        self.calls = 0
        original = transport.write

        def write(data):
            self.calls += 1
            original(data)

        transport.write = write


class BatchTests(SynchronousTestCase):
    def setUp(self):
        self.single = SingleLink(max_batch=3)
        self.single.signOn()
        self.writes = CountingWrites(self.single.transport)

    def receiveAtOnce(self, *messages):
        self.single.link.dataReceived(b"".join(frame(m) for m in messages))

    def test_one_batch_per_turn(self):
        s = self.single
        self.receiveAtOnce(*[request(n) for n in range(1, 8)])
        # Three handled, their answers in one write; reading paused.
        self.assertEqual(len(s.handler.seen), 3)
        self.assertEqual(self.writes.calls, 1)
        self.assertEqual([m["stan"] for m in s.sent()], ["000001", "000002", "000003"])
        self.assertEqual(s.transport.producerState, "paused")
        self.assertEqual(s.link.backlog, 4)
        # The rest waits for the next turn (a Clock runs every turn due).
        self.assertIn("_handleBacklog", [c.func.__name__ for c in s.clock.getDelayedCalls()])
        s.clock.advance(0)
        self.assertEqual(s.link.backlog, 0)
        self.assertEqual([m["stan"] for m in s.handler.seen], ["%06d" % n for n in range(1, 8)])
        self.assertEqual([m["stan"] for m in s.sent()], ["%06d" % n for n in range(4, 8)])
        self.assertEqual(self.writes.calls, 3)
        self.assertEqual(s.transport.producerState, "producing")
        self.assertNotIn("_handleBacklog", [c.func.__name__ for c in s.clock.getDelayedCalls()])

    def test_small_reads_are_handled_at_once(self):
        s = self.single
        self.receiveAtOnce(request(1), request(2), request(3))
        self.assertEqual(len(s.handler.seen), 3)
        self.assertEqual(s.transport.producerState, "producing")

    def test_frames_before_a_bad_header_are_handled_first(self):
        s = self.single
        events = Events(self)
        data = b"".join(frame(request(n)) for n in range(1, 6)) + b"ZZZZ"
        s.link.dataReceived(data)
        self.assertEqual(len(s.handler.seen), 3)
        self.assertEqual(s.link.state, "ready")
        self.assertEqual(events.named("violation"), [])
        s.clock.advance(0)
        self.assertEqual(len(s.handler.seen), 5)
        self.assertEqual([m["stan"] for m in s.sent()], ["%06d" % n for n in range(1, 6)])
        self.assertEqual(len(events.named("violation")), 1)
        self.assertEqual(s.link.state, "closing")

    def test_requests_left_when_the_link_goes_are_not_handled(self):
        s = self.single
        events = Events(self)
        self.receiveAtOnce(*[request(n) for n in range(1, 6)])
        s.link.connectionLost(Failure(ConnectionLost("peer gone")))
        s.clock.advance(0)
        self.assertEqual(len(s.handler.seen), 3)
        self.assertEqual(s.link.state, "lost")
        skipped = [e for e in events.events if "not handled" in e.get("log_format", "")]
        self.assertEqual([e["key"] for e in skipped], ["P/000004/0101000000", "P/000005/0101000000"])

    def test_option_is_checked(self):
        self.assertRaises(ValueError, SingleLink, max_batch=0)

    def test_every_kind_of_frame_in_one_batch(self):
        """
        A batch takes named requests, other request MTIs, requests with a
        bad key, answers, late answers and non-objects in turn, each
        dealt with once and in order.
        """
        s = SingleLink(max_batch=10)
        s.signOn()
        events = Events(self)
        d = s.link.request({"mti": "0820", "sender": "S", "stan": "000777", "time": "0101000000"})
        s.transport.clear()
        before = dict(s.link.counters)
        answer = {"mti": "0830", "resp": "00", "sender": "S", "stan": "000777", "time": "0101000000"}
        s.link.dataReceived(
            frame(request(1))
            + frame(dict(request(2), mti="0100"))
            + frame(dict(request(3), stan=3))
            + frame(answer)
            + frame(answer)
            + frame(b"[1,2]")
            + frame(dict(request(4), time=7))
            + frame(request(5))
        )
        self.assertEqual(self.successResultOf(d)["resp"], "00")
        self.assertEqual(
            [(m["mti"], m["stan"]) for m in s.handler.seen],
            [("0200", "000001"), ("0100", "000002"), ("0200", "000005")],
        )
        self.assertEqual(
            [(m["mti"], m["stan"], m["resp"]) for m in s.sent()],
            [("0210", "000001", "00"), ("0110", "000002", "00"), ("0210", "000004", "30"), ("0210", "000005", "00")],
        )
        counted = {k: s.link.counters[k] - before[k] for k in ("requestsIn", "answered", "late", "formatErrors")}
        self.assertEqual(counted, {"requestsIn": 3, "answered": 1, "late": 1, "formatErrors": 3})
        self.assertEqual(len(events.named("format-error")), 3)
        self.assertEqual(s.link.state, "ready")


class BacklogAnswerTests(SynchronousTestCase):
    def test_answers_read_before_the_link_went_count(self):
        """
        Answers that had arrived but waited for their turn when the link
        was lost still answer their requests: they are not failed with
        LinkLost (which would make a purchase in doubt for nothing).
        """
        handler = HoldingHandler()
        p = Pair(paymentHandler=handler, max_batch=2)
        ds = [p.platform.request(purchase(n)) for n in range(1, 6)]
        p.flush()
        handler.releaseAll()
        # Move the five answers in one read, and lose the link before the
        # platform's next turn.
        p.pump.pump(advanceClock=False)
        self.assertEqual(len([d for d in ds if d.called]), 2)
        p.platform.connectionLost(Failure(ConnectionLost("peer gone")))
        for d in ds:
            self.assertEqual(self.successResultOf(d)["resp"], "00")
        self.assertEqual(p.platform.counters["answered"], 6)  # with the sign-on

    def test_requests_without_answers_still_fail(self):
        handler = HoldingHandler()
        p = Pair(paymentHandler=handler, max_batch=2)
        ds = [p.platform.request(purchase(n)) for n in range(1, 4)]
        p.flush()
        handler.held.pop(0).callback({"resp": "00"})
        p.pump.pump(advanceClock=False)
        p.platform.connectionLost(Failure(ConnectionLost("peer gone")))
        self.assertEqual(self.successResultOf(ds[0])["resp"], "00")
        for d in ds[1:]:
            self.failureResultOf(d, LinkLost)


class QueueOrderTests(SynchronousTestCase):
    def test_waiting_requests_go_first(self):
        """
        While requests wait for room on a full link, a request made by the
        callback of an answer waits behind them: room an answer frees goes
        to the oldest waiting request.
        """
        handler = HoldingHandler()
        rig = PoolRig(ports=(7001,), handlers=[handler], max_in_flight=2)
        order = []

        def again(answer):
            order.append("answered")
            d = rig.service.request(purchase(99))
            d.addCallback(lambda a: order.append("late-comer"))
            return answer

        first = rig.service.request(purchase(1))
        first.addCallback(again)
        rig.service.request(purchase(2)).addCallback(lambda a: order.append("second"))
        rig.service.request(purchase(3)).addCallback(lambda a: order.append("waited"))
        rig.flush()
        self.assertEqual(len(rig.service.queue), 1)
        handler.held.pop(0).callback({"resp": "00"})
        rig.flush()
        # The waiting purchase(3) went out; the late-comer waits its turn.
        self.assertEqual([m["amount"] for m in handler.seen], ["%012d" % n for n in (1, 2, 3)])
        self.assertEqual(len(rig.service.queue), 1)
        handler.releaseAll()
        rig.flush()
        handler.releaseAll()
        rig.flush()
        self.assertEqual(order, ["answered", "second", "waited", "late-comer"])
        self.assertEqual(len(rig.service.queue), 0)

    def test_released_requests_join_the_batch_write(self):
        """
        Requests let go by the room a batch of answers frees are written
        with that batch, not one by one.
        """
        handler = HoldingHandler()
        rig = PoolRig(ports=(7001,), handlers=[handler], max_in_flight=2)
        ds = [rig.service.request(purchase(n)) for n in range(1, 5)]
        rig.flush()
        self.assertEqual(len(rig.service.queue), 2)
        link = rig.service.factories[0].link
        writes = CountingWrites(link.transport)
        handler.releaseAll()
        rig.flush()
        # One read of two answers, one write of the two waiting requests.
        self.assertEqual(writes.calls, 1)
        self.assertEqual(len(handler.held), 2)
        handler.releaseAll()
        rig.flush()
        self.assertEqual([self.successResultOf(d)["resp"] for d in ds], ["00"] * 4)


class WriteTests(SynchronousTestCase):
    def test_heartbeat_counts_and_answers_leave_whole(self):
        """
        A read of one frame is answered by one write of one frame.
        """
        s = SingleLink(handler=RecordingHandler({"resp": "00", "note": "x" * 50}))
        s.signOn()
        writes = CountingWrites(s.transport)
        s.receive(request(1))
        self.assertEqual(writes.calls, 1)
        self.assertEqual([m["note"] for m in frames(s.transport.value())], ["x" * 50])
