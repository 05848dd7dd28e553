"""
Tests for L{tvlink.link.protocol}: liveness, pending requests, inbound requests,
bad input and sign-on, all on a Clock with no sockets.
"""


from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import Events, Pair, RecordingHandler, SingleLink, frame, frames
from tvlink.errors import DuplicateKey, LinkLost, LinkNotReady, RequestTimeout
from tvlink.link.pending import PendingRequests
from tvlink.link.settings import LinkSettings
from tvlink.payment.service import PaymentFactory
from tvlink.platform.factory import PlatformFactory
from tvlink.platform.service import PlatformHandler


class LivenessTests(SynchronousTestCase):
    def test_default_read_idle_is_180s(self):
        s = SingleLink()
        events = Events(self)
        s.clock.advance(179.9)
        self.assertFalse(s.transport.disconnecting)
        s.clock.advance(0.1)
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(len(events.named("heartbeat-timeout")), 1)
        self.assertEqual(events.named("heartbeat-timeout")[0]["peer"], "10.1.2.3:40000")

    def test_idle_heartbeat_cadence(self):
        s = SingleLink(heartbeat=60, idle_timeout=1000)
        for second in range(1, 301):
            s.clock.advance(1)
            # keep the link alive from the peer's side
            if second % 100 == 0:
                s.link.dataReceived(b"0000")
        self.assertEqual(s.sent(), [None] * 5)  # 60, 120, 180, 240, 300

    def test_no_heartbeat_while_busy(self):
        s = SingleLink(heartbeat=60, idle_timeout=1000)
        s.signOn()
        for i in range(20):
            s.clock.advance(30)
            s.receive({"mti": "0800", "nmi": "301", "sender": "P", "stan": "%06d" % (i + 2), "time": "0101000000"})
        out = s.sent()
        self.assertEqual(len(out), 20)
        self.assertNotIn(None, out)
        # Then silence: one heartbeat 60s after the last answer.
        s.clock.advance(59)
        self.assertEqual(s.sent(), [])
        s.clock.advance(1)
        self.assertEqual(s.sent(), [None])

    def test_heartbeat_resets_read_idle_and_is_not_answered(self):
        s = SingleLink(heartbeat=1000, idle_timeout=100)
        for _ in range(5):
            s.clock.advance(90)
            s.link.dataReceived(b"0000")
        self.assertFalse(s.transport.disconnecting)
        self.assertEqual(s.sent(), [])
        self.assertEqual(s.link.counters["heartbeatsIn"], 5)

    def test_partial_frame_does_not_reset_read_idle(self):
        s = SingleLink(heartbeat=1000, idle_timeout=100, frame_timeout=500)
        s.clock.advance(50)
        s.link.dataReceived(b"00")
        s.clock.advance(50)
        self.assertTrue(s.transport.disconnecting)

    def test_close_falls_back_to_abort(self):
        s = SingleLink(idle_timeout=10, close_timeout=5)
        s.clock.advance(10)
        self.assertTrue(s.transport.disconnecting)
        self.assertFalse(s.transport.disconnected)
        s.clock.advance(5)
        self.assertTrue(s.transport.disconnected)  # aborted

    def test_abort_cancelled_when_close_completes(self):
        s = SingleLink(idle_timeout=10, close_timeout=5)
        s.clock.advance(10)
        s.link.connectionLost(Failure(Exception("closed")))
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_pair_stays_up_on_heartbeats(self):
        p = Pair(heartbeat=60, idle_timeout=180)
        p.advance(3600, step=5)
        self.assertEqual(p.platform.state, "ready")
        self.assertEqual(p.payment.state, "ready")
        self.assertGreaterEqual(p.platform.counters["heartbeatsIn"], 59)
        self.assertGreaterEqual(p.payment.counters["heartbeatsIn"], 59)


class PendingRequestsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.timedOut = []
        self.pending = PendingRequests(self.clock, self.timedOut.append)

    def test_resolve(self):
        self.clock.advance(2)
        d = self.pending.add(("A", "1", "t"), 5)
        self.assertEqual(self.pending.resolve(("A", "1", "t"), {"resp": "00"}), 2)
        self.assertEqual(self.successResultOf(d), {"resp": "00"})
        self.assertEqual(len(self.pending), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.pending.resolve(("A", "1", "t"), {}))

    def test_when_empty(self):
        a = self.pending.add(("A", "1", "t"), 5)
        b = self.pending.add(("A", "2", "t"), 5)
        empty = self.pending.whenEmpty()
        self.pending.resolve(("A", "1", "t"), {})
        self.assertNoResult(empty)
        self.clock.advance(5)
        self.successResultOf(empty)
        self.successResultOf(a)
        self.failureResultOf(b, RequestTimeout)
        self.successResultOf(self.pending.whenEmpty())

    def test_timeout_removes_entry(self):
        d = self.pending.add(("A", "1", "t"), 5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        f = self.failureResultOf(d, RequestTimeout)
        self.assertIn("A/1/t", str(f.value))
        self.assertIn("5s", str(f.value))
        self.assertEqual(len(self.pending), 0)
        self.assertEqual(self.timedOut, [("A", "1", "t")])

    def test_cancel_removes_entry(self):
        d = self.pending.add(("A", "1", "t"), 5)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.pending), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_duplicate(self):
        self.pending.add(("A", "1", "t"), 5)
        self.assertRaises(DuplicateKey, self.pending.add, ("A", "1", "t"), 5)

    def test_fail_all(self):
        ds = [self.pending.add(("A", str(i), "t"), 5) for i in range(3)]
        self.pending.failAll(LinkLost("gone"))
        for d in ds:
            self.failureResultOf(d, LinkLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RequestTests(SynchronousTestCase):
    def test_answer_and_fields_filled(self):
        p = Pair()
        d = p.platform.request({"mti": "0200", "proc": "300000", "pan": "6222020000000000018"})
        p.flush()
        answer = self.successResultOf(d)
        self.assertEqual(answer["mti"], "0210")
        self.assertEqual(answer["resp"], "00")
        self.assertEqual(answer["sender"], "PLATFORM")
        self.assertEqual(len(answer["stan"]), 6)
        self.assertEqual(len(answer["time"]), 10)
        self.assertEqual(answer["balance"], "%012d" % 100000)

    def test_timeout_then_late_answer(self):
        handler = RecordingHandler(answer=lambda m: Deferred())
        p = Pair(paymentHandler=handler, timeout=40)
        events = Events(self)
        d = p.platform.request({"mti": "0200", "proc": "000000"})
        p.flush()
        p.clock.advance(40)
        f = self.failureResultOf(d, RequestTimeout)
        self.assertEqual(f.value.timeout, 40)
        self.assertEqual(len(p.platform.pending), 0)
        # The answer arrives after all: handed to the late path, logged.
        p.payment.answer(handler.seen[0], {"resp": "00"})
        p.flush()
        late = events.named("late-response")
        self.assertEqual(len(late), 1)
        self.assertEqual(late[0]["key"], "/".join(f.value.key))
        self.assertEqual(late[0]["resp"], "00")
        self.assertEqual(p.platformFactory.counters["late"], 1)
        self.assertEqual(p.platform.state, "ready")

    def test_link_lost_fails_pending_at_once(self):
        p = Pair(paymentHandler=RecordingHandler(answer=lambda m: Deferred()))
        ds = [p.platform.request({"mti": "0200", "proc": "000000"}) for _ in range(3)]
        p.flush()
        p.paymentTransport.loseConnection()
        p.flush()
        for d in ds:
            f = self.failureResultOf(d, LinkLost)
            self.assertIn("lost", str(f.value))
        self.assertEqual(len(p.platform.pending), 0)
        self.assertEqual(p.platform.state, "lost")

    def test_duplicate_key_refused_before_sending(self):
        p = Pair(paymentHandler=RecordingHandler(answer=lambda m: Deferred()))
        m = {"mti": "0200", "sender": "PLATFORM", "stan": "000777", "time": "1125120000"}
        p.platform.request(m)
        before = p.platform.counters["framesOut"]
        self.assertRaises(DuplicateKey, p.platform.request, m)
        self.assertEqual(p.platform.counters["framesOut"], before)

    def test_not_ready(self):
        s = SingleLink()
        self.assertRaises(LinkNotReady, s.link.request, {"mti": "0820"})

    def test_stan_released(self):
        p = Pair()
        for _ in range(5):
            p.platform.request({"mti": "0800", "nmi": "301"})
            p.flush()
        self.assertEqual(p.platformSettings.stans.inFlight(), 0)

    def test_payment_to_platform_notification(self):
        p = Pair()
        d = p.payment.request({"mti": "0820", "order": "A1"})
        p.flush()
        answer = self.successResultOf(d)
        self.assertEqual((answer["mti"], answer["resp"], answer["sender"]), ("0830", "00", "PAYMENT"))

    def test_platform_refuses_other_requests(self):
        p = Pair()
        d = p.payment.request({"mti": "0200", "proc": "000000"})
        p.flush()
        self.assertEqual(self.successResultOf(d)["resp"], "12")

    def test_echo_both_ways(self):
        p = Pair()
        a = p.platform.request({"mti": "0800", "nmi": "301"})
        b = p.payment.request({"mti": "0800", "nmi": "301"})
        p.flush()
        self.assertEqual(self.successResultOf(a)["resp"], "00")
        self.assertEqual(self.successResultOf(b)["resp"], "00")


class HandlerTests(SynchronousTestCase):
    def test_raising_handler_answers_96(self):
        def boom(m):
            raise ZeroDivisionError("oops")

        s = SingleLink(handler=RecordingHandler(answer=boom))
        s.signOn()
        s.receive({"mti": "0200", "sender": "P", "stan": "000002", "time": "0101000000"})
        out = s.sent()
        self.assertEqual(out[0]["resp"], "96")
        self.assertEqual((out[0]["mti"], out[0]["stan"]), ("0210", "000002"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(s.link.state, "ready")

    def test_deferred_answer(self):
        waiting = Deferred()
        s = SingleLink(handler=RecordingHandler(answer=lambda m: waiting))
        s.signOn()
        s.receive({"mti": "0200", "sender": "P", "stan": "000002", "time": "0101000000"})
        self.assertEqual(s.sent(), [])
        waiting.callback({"resp": "51"})
        self.assertEqual(s.sent()[0]["resp"], "51")

    def test_answer_without_resp_is_96(self):
        s = SingleLink(handler=RecordingHandler(answer=lambda m: {"balance": "1"}))
        s.signOn()
        s.receive({"mti": "0200", "sender": "P", "stan": "000002", "time": "0101000000"})
        self.assertEqual(s.sent()[0]["resp"], "96")

    def test_answer_after_loss_is_logged_not_sent(self):
        waiting = Deferred()
        events = Events(self)
        s = SingleLink(handler=RecordingHandler(answer=lambda m: waiting))
        s.signOn()
        s.receive({"mti": "0200", "sender": "P", "stan": "000002", "time": "0101000000"})
        s.link.connectionLost(Failure(Exception("reset")))
        waiting.callback({"resp": "00"})
        self.assertEqual(s.sent(), [])
        self.assertTrue(any("not sent" in e.get("log_format", "") for e in events.events))


    def test_unencodable_answer_is_96(self):
        s = SingleLink(handler=RecordingHandler(answer=lambda m: {"resp": "00", "pad": "x" * 10000}))
        s.signOn()
        s.receive({"mti": "0200", "sender": "P", "stan": "000002", "time": "0101000000"})
        self.assertEqual(s.sent()[0]["resp"], "96")
        s.handler.answer = lambda m: {"resp": "00", "when": object()}
        s.receive({"mti": "0200", "sender": "P", "stan": "000003", "time": "0101000000"})
        self.assertEqual(s.sent()[0]["resp"], "96")

    def test_not_signed_on_refused_91(self):
        s = SingleLink()
        s.receive({"mti": "0200", "proc": "000000", "sender": "P", "stan": "000002", "time": "0101000000"})
        self.assertEqual(s.sent()[0]["resp"], "91")
        self.assertEqual(s.handler.seen, [])

    def test_no_handling_while_closing(self):
        s = SingleLink()
        s.signOn()
        s.link.close("test")
        s.receive({"mti": "0200", "sender": "P", "stan": "000002", "time": "0101000000"})
        self.assertEqual(s.handler.seen, [])
        self.assertEqual(s.sent(), [])

    def test_counters_before_callback(self):
        p = Pair()
        seen = []
        d = p.platform.request({"mti": "0800", "nmi": "301"})
        d.addCallback(lambda _: seen.append(p.platform.counters["answered"]))
        p.flush()
        self.assertEqual(seen, [2])  # the sign-on and this one


class BadInputTests(SynchronousTestCase):
    def test_nmi_missing(self):
        s = SingleLink()
        s.receive({"mti": "0800", "sender": "P", "stan": "000001", "time": "t"})
        out = s.sent()
        self.assertEqual((out[0]["mti"], out[0]["resp"]), ("0810", "30"))
        self.assertNotIn("nmi", out[0])

    def test_response_without_key(self):
        s = SingleLink()
        events = Events(self)
        s.receive({"mti": "0810", "stan": "000001"})
        self.assertEqual(len(events.named("format-error")), 1)
        self.assertEqual(events.named("late-response"), [])
        s.receive({"mti": "ab1c", "sender": "P", "stan": "1"})
        self.assertEqual(len(events.named("format-error")), 2)

    def test_each_frame_has_its_own_timeout(self):
        s = SingleLink(frame_timeout=30, heartbeat=1000, idle_timeout=1000)
        # Every chunk completes a frame and begins the next: each frame
        # takes 10 s, well within its 30 s, for two minutes.
        s.link.dataReceived(b"00")
        for _ in range(12):
            s.clock.advance(10)
            s.link.dataReceived(b"0000")
        self.assertFalse(s.transport.disconnecting)

    def test_non_digit_header(self):
        s = SingleLink()
        events = Events(self)
        s.link.dataReceived(b"12x4whatever")
        self.assertTrue(s.transport.disconnecting)
        v = events.named("violation")
        self.assertEqual(len(v), 1)
        self.assertEqual(v[0]["peer"], "10.1.2.3:40000")
        self.assertEqual(s.factory.counters["violations"], 1)

    def test_oversize_frame(self):
        s = SingleLink(header="bin4", max_frame=1000)
        events = Events(self)
        s.link.dataReceived(b"\x00\x00\x03\xe9")
        self.assertTrue(s.transport.disconnecting)
        self.assertIn("exceeds", events.named("violation")[0]["reason"])

    def test_frames_before_bad_header_are_handled(self):
        s = SingleLink()
        s.link.dataReceived(
            frame({"mti": "0800", "nmi": "301", "sender": "P", "stan": "000001", "time": "t"}) + b"zzzz"
        )
        self.assertEqual(s.sent()[0]["resp"], "00")
        self.assertTrue(s.transport.disconnecting)

    def test_slow_drip(self):
        s = SingleLink(frame_timeout=30, heartbeat=1000, idle_timeout=1000)
        events = Events(self)
        s.link.dataReceived(b"0010")
        for _ in range(29):
            s.clock.advance(1)
            s.link.dataReceived(b"x" if _ < 5 else b"")
        self.assertFalse(s.transport.disconnecting)
        s.clock.advance(1)
        self.assertTrue(s.transport.disconnecting)
        self.assertIn("incomplete", events.named("violation")[0]["reason"])

    def test_completed_frame_clears_frame_timer(self):
        s = SingleLink(frame_timeout=30, heartbeat=1000, idle_timeout=1000)
        s.link.dataReceived(b"00")
        s.clock.advance(20)
        s.link.dataReceived(b"00")
        s.clock.advance(20)
        s.link.dataReceived(b"00")
        s.clock.advance(29)
        self.assertFalse(s.transport.disconnecting)
        s.clock.advance(1)
        self.assertTrue(s.transport.disconnecting)

    def test_bad_json_with_key_answered_30(self):
        s = SingleLink()
        s.receive(b'{"mti":"0200","sender":"P","stan":"000009","time":"0101000000","amount":[}')
        self.assertEqual(s.sent(), [])  # not JSON at all: key unreadable, dropped
        s.receive({"mti": "0200", "sender": "P", "stan": 9, "time": "0101000000"})
        self.assertEqual(s.sent(), [])  # stan not a string: dropped
        s.receive({"mti": "02000", "sender": "P", "stan": "000009"})
        self.assertEqual(s.sent(), [])  # mti unusable: dropped
        s.receive({"mti": "0200", "sender": "P", "stan": "000009", "time": 7})
        out = s.sent()
        self.assertEqual((out[0]["mti"], out[0]["resp"], out[0]["stan"]), ("0210", "30", "000009"))
        self.assertFalse(s.transport.disconnecting)
        self.assertEqual(s.link.counters["formatErrors"], 4)

    def test_non_object_and_non_utf8(self):
        s = SingleLink()
        events = Events(self)
        s.receive(b"[1,2]", b"\xff\xfe\xfd")
        self.assertEqual(s.sent(), [])
        self.assertEqual(len(events.named("format-error")), 2)
        self.assertFalse(s.transport.disconnecting)

    def test_one_bad_peer_does_not_harm_another(self):
        good = Pair()
        bad = SingleLink()
        bad.link.dataReceived(b"garbage!")
        d = good.platform.request({"mti": "0800", "nmi": "301"})
        good.flush()
        self.assertEqual(self.successResultOf(d)["resp"], "00")


class SignOnTests(SynchronousTestCase):
    def test_ready_only_after_00(self):
        s = SingleLink()
        self.assertEqual(s.link.state, "up")
        out = s.signOn()
        self.assertEqual((out[0]["mti"], out[0]["nmi"], out[0]["resp"]), ("0810", "001", "00"))
        self.assertEqual(s.link.state, "ready")
        self.assertEqual(s.factory.readyLinks, [s.link])

    def test_platform_refused(self):
        class Refusing(PaymentFactory):
            def signOnReceived(self, link, message):
                return "12"

        events = Events(self)
        p = Pair(paymentFactoryClass=Refusing)
        self.assertEqual(p.platform.state, "lost")
        self.assertEqual(p.payment.state, "lost")
        self.assertEqual(events.named("sign-on-refused")[0]["resp"], "12")

    def test_sign_on_timeout_closes(self):
        clock = Clock()
        f = PlatformFactory("h:1", LinkSettings(reactor=clock, timeout=40), PlatformHandler())
        link = f.buildProtocol(None)
        t = StringTransport()
        link.makeConnection(t)
        self.assertEqual(frames(t.value())[0]["nmi"], "001")
        clock.advance(40)
        self.assertTrue(t.disconnecting)
        self.assertEqual(link.state, "closing")

    def test_sign_off(self):
        p = Pair()
        d = p.platform.request({"mti": "0800", "nmi": "002"})
        p.flush()
        self.assertEqual(self.successResultOf(d)["resp"], "00")
        self.assertEqual(p.payment.state, "up")
        self.assertEqual(p.paymentFactory.readyLinks, [])
