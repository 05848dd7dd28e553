"""
Tests for L{tvlink.testing.fakes}: a fake payment node answering by rule
to a fake platform in memory on a Clock, the link's own traffic while
idle, and the node listening on a memory reactor and on real loopback.
"""

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

import tvlink
from tests.processes import ReactorTestCase, getReactor
from tvlink.errors import LinkNotReady, RequestTimeout
from tvlink.testing.fakes import FakePaymentNode, FakePlatform, ScriptedHandler

PAN = "6222020000000000018"


def purchase(amount=1234, **fields):
    return dict(
        {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "%012d" % (amount,)}, **fields
    )


@implementer(tvlink.IMessageHandler)
class OverLimit:
    """
    A handler under test: declines purchases over 100.00.
    """

    def handle(self, message):
        return {"resp": "51" if int(message["amount"]) > 10000 else "00"}


class ScriptedHandlerTests(SynchronousTestCase):
    def test_approvesByDefault(self):
        handler = ScriptedHandler()
        self.assertEqual(handler.handle(purchase()), {"resp": "00"})
        self.assertEqual(handler.received, [purchase()])

    def test_newestMatchingRuleAnswers(self):
        handler = ScriptedHandler()
        handler.decline("51", "0200").decline("14", {"pan": "1"})
        handler.respond(lambda m: {"resp": "00", "balance": "1"}, lambda m: m.get("proc") == "300000")
        self.assertEqual(handler.handle(purchase())["resp"], "51")
        self.assertEqual(handler.handle(purchase(pan="1"))["resp"], "14")
        self.assertEqual(handler.handle(purchase(proc="300000")), {"resp": "00", "balance": "1"})
        self.assertEqual(handler.handle({"mti": "0820"}), {"resp": "00"})
        handler.reset()
        self.assertEqual(handler.handle(purchase())["resp"], "00")
        self.assertEqual(len(handler.received), 5)

    def test_declineAddsFields(self):
        handler = ScriptedHandler().decline("51", balance="000000000000")
        self.assertEqual(handler.handle(purchase()), {"resp": "51", "balance": "000000000000"})

    def test_holdAndRelease(self):
        handler = ScriptedHandler().hold("0200")
        first, second = handler.handle(purchase(1)), handler.handle(purchase(2))
        self.assertEqual([h.message["amount"] for h in handler.held], ["%012d" % 1, "%012d" % 2])
        handler.held[0].answer("05", note="x")
        self.assertEqual(self.successResultOf(first), {"resp": "05", "note": "x"})
        self.assertNoResult(second)
        self.assertEqual(handler.release(), 1)
        self.assertEqual(self.successResultOf(second), {"resp": "00"})
        self.assertEqual(handler.held, [])

    def test_ignore(self):
        handler = ScriptedHandler().ignore()
        d = handler.handle(purchase())
        self.assertIsInstance(d, Deferred)
        self.assertNoResult(d)
        self.assertEqual(handler.held, [])


class FakePlatformTests(SynchronousTestCase):
    def setUp(self):
        self.node = FakePaymentNode()
        self.platform = FakePlatform(self.node)

    def test_signedOn(self):
        self.assertTrue(self.platform.ready)
        self.assertIs(self.platform.clock, self.node.reactor)
        self.assertEqual(self.node.links, [self.platform.paymentLink])
        self.assertEqual(self.node.links[0].platform, "PLATFORM")

    def test_purchaseApproved(self):
        answer = self.successResultOf(self.platform.request(purchase()))
        self.assertEqual((answer["mti"], answer["resp"]), ("0210", "00"))
        self.assertEqual(answer["sender"], "PLATFORM")

    def test_declineCodePassesThrough(self):
        self.node.decline("51", "0200")
        answer = self.successResultOf(self.platform.request(purchase()))
        self.assertEqual((answer["mti"], answer["resp"]), ("0210", "51"))
        answer = self.successResultOf(self.platform.request({"mti": "0220", "proc": "200000"}))
        self.assertEqual((answer["mti"], answer["resp"]), ("0230", "00"))

    def test_recordsWhatWasReceived(self):
        self.platform.request(purchase(1))
        self.platform.request(purchase(2, order="B"))
        first, second = self.node.received
        self.assertEqual((first["amount"], second["amount"]), ("%012d" % 1, "%012d" % 2))
        self.assertEqual(second["order"], "B")
        self.assertEqual(first["sender"], "PLATFORM")
        self.assertNotEqual(first["stan"], second["stan"])

    def test_heldRequestTimesOut(self):
        self.node.hold()
        d = self.platform.request(purchase(), timeout=5)
        self.assertEqual(len(self.node.held), 1)
        self.platform.advance(4.9)
        self.assertNoResult(d)
        self.platform.advance(0.1)
        self.failureResultOf(d, RequestTimeout)
        # The answer that comes after is late: counted, and the link stays.
        self.node.release()
        self.platform.flush()
        self.assertEqual(self.platform.factory.counters["late"], 1)
        self.assertTrue(self.platform.ready)

    def test_heldRequestReleased(self):
        self.node.hold({"pan": PAN})
        d = self.platform.request(purchase())
        self.platform.advance(3)
        self.assertNoResult(d)
        self.node.held[0].answer("00", auth="123456")
        self.platform.flush()
        self.assertEqual(self.successResultOf(d)["auth"], "123456")

    def test_neverAnswered(self):
        self.node.ignore()
        d = self.platform.request(purchase())
        self.platform.advance(39)
        self.assertNoResult(d)
        self.platform.advance(1)
        self.failureResultOf(d, RequestTimeout)

    def test_linkChecksWhenIdle(self):
        """
        An idle link sends its link checks on the clock and stays up past
        the read-idle time; none of them reaches the handler.
        """
        self.platform.advance(600, step=10)
        self.assertTrue(self.platform.ready)
        self.assertGreaterEqual(self.platform.link.counters["heartbeatsOut"], 9)
        self.assertGreaterEqual(self.node.links[0].counters["heartbeatsIn"], 9)
        self.assertGreaterEqual(self.node.links[0].counters["heartbeatsOut"], 9)
        self.assertEqual(self.node.received, [])

    def test_silenceEndsTheLink(self):
        """
        Without the pump the link checks go nowhere: at the read-idle time
        the platform declares the link dead.
        """
        self.platform.clock.advance(180)
        self.assertEqual(self.platform.link.state, "closing")

    def test_nodeNotifiesThePlatform(self):
        d = self.node.request({"mti": "0820", "order": "A1"})
        self.platform.flush()
        answer = self.successResultOf(d)
        self.assertEqual((answer["mti"], answer["resp"]), ("0830", "00"))

    def test_close(self):
        self.platform.close()
        self.assertEqual(self.platform.link.state, "lost")
        self.assertEqual(self.node.links, [])
        self.failureResultOf(self.node.request({"mti": "0820"}), LinkNotReady)


class PaymentSideTests(SynchronousTestCase):
    def test_handlerUnderTest(self):
        platform = FakePlatform(OverLimit())
        self.assertIsNone(platform.node)
        self.assertEqual(self.successResultOf(platform.request(purchase(10000)))["resp"], "00")
        self.assertEqual(self.successResultOf(platform.request(purchase(10001)))["resp"], "51")

    def test_defaultNode(self):
        clock = Clock()
        platform = FakePlatform(clock=clock, heartbeat=5)
        self.assertIs(platform.node.reactor, clock)
        platform.node.decline("13")
        self.assertEqual(self.successResultOf(platform.request(purchase()))["resp"], "13")
        platform.advance(5)
        self.assertEqual(platform.node.links[0].counters["heartbeatsOut"], 1)

    def test_otherClock(self):
        self.assertRaises(ValueError, FakePlatform, FakePaymentNode(), clock=Clock())


class ListenTests(SynchronousTestCase):
    def test_memoryReactor(self):
        reactor = MemoryReactorClock()
        node = FakePaymentNode(reactor=reactor)
        self.assertIsNone(node.address())
        self.successResultOf(node.listen(7400))
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, factory, interface), (7400, node.factory, "127.0.0.1"))
        self.assertEqual(node.address(), "0.0.0.0:7400")
        self.successResultOf(node.stop())
        self.assertIsNone(node.address())


class LoopbackTests(ReactorTestCase):
    timeout = 10

    @inlineCallbacks
    def test_platformServiceOverLoopback(self):
        """
        A L{tvlink.PlatformService} signs on to a listening node over
        127.0.0.1 and gets its scripted answers.
        """
        reactor = getReactor()
        node = FakePaymentNode(reactor=reactor).decline("51", {"amount": "%012d" % 20000})
        port = yield node.listen()
        self.addCleanup(node.stop)
        self.assertEqual(node.address(), "127.0.0.1:%d" % (port,))
        platform = tvlink.PlatformService([node.address()], reactor=reactor)
        platform.startService()
        self.addCleanup(platform.stopService)
        yield platform.whenReady().addTimeout(5, reactor)
        approved = yield platform.request(purchase(100), timeout=5)
        declined = yield platform.request(purchase(20000), timeout=5)
        self.assertEqual((approved["resp"], declined["resp"]), ("00", "51"))
        self.assertEqual([m["amount"] for m in node.received], ["%012d" % 100, "%012d" % 20000])
