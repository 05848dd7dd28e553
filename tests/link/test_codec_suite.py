"""
The link's behaviours (L{tests.link.test_tls_suite}) under the C{iso8583}
and C{cups} codecs, over plain TCP and over mutual TLS, with the
scenarios a host link adds: a reversal carrying the card, a request
timing out and its late answer, and echo-test heartbeats for hosts that
take no empty frames.
"""

from twisted.internet import defer

from tests.link import test_tls_suite as suite
from tests.processes import pause, waitUntil, withDeadline
from tvlink.errors import RequestTimeout


class _HostScenarios:
    paymentSender = "20000002"
    platformSender = "10000001"

    @defer.inlineCallbacks
    def test_reversalCarriesTheCard(self):
        """
        A purchase, then its reversal naming the card (field 2) and the
        original (field 90): approved, and the payment side saw both.
        """
        payment, port, platform, link, serverLink = yield self.linked()
        answer = yield withDeadline(platform.request(suite.purchase(700, "R-1")), 5, "the purchase")
        self.assertEqual(answer["resp"], "00")
        reversal = {
            "mti": "0420",
            "pan": suite.PAN,
            "amount": "%012d" % (700,),
            "currency": "156",
            "orig": {"mti": "0200", "sender": answer["sender"], "stan": answer["stan"], "time": answer["time"]},
        }
        answer = yield withDeadline(platform.request(reversal), 5, "the reversal")
        self.assertEqual((answer["mti"], answer["resp"]), ("0430", "00"))
        seen = payment.handler.seen[-1]
        self.assertEqual((seen["mti"], seen["pan"], seen["orig"]), ("0420", suite.PAN, reversal["orig"]))
        answer = yield withDeadline(platform.request(dict(suite.BALANCE)), 5, "the balance")
        self.assertEqual(answer["balance"], "%012d" % (suite.LIMIT,))

    @defer.inlineCallbacks
    def test_timeoutThenLateAnswer(self):
        """
        An answer held past the request's timeout fails it with
        L{RequestTimeout}; the answer, when it comes, takes the late path.
        """
        payment, port, platform, link, serverLink = yield self.linked()
        payment.handler.holding = True
        failures = []
        platform.request(dict(suite.BALANCE), timeout=0.3).addErrback(failures.append)
        yield waitUntil(lambda: failures, 5, "the timeout")
        self.assertTrue(failures[0].check(RequestTimeout), failures[0])
        payment.handler.release()
        yield waitUntil(lambda: self.linkEvents("late-response"), 5, "the late answer")
        self.assertEqual(link.state, "ready")

    @defer.inlineCallbacks
    def test_echoHeartbeatsKeepIdleLinkUp(self):
        """
        With C{heartbeat_frame="echo"} a quiet link stays up on echo tests
        alone: no empty frame either way, each echo answered once.
        """
        timers = {"heartbeat": 0.2, "idle_timeout": 0.8, "heartbeat_frame": "echo"}
        payment, port, platform, link, serverLink = yield self.linked(timers, timers)
        yield pause(2.0)
        self.assertEqual((link.state, serverLink.state), ("ready", "ready"))
        self.assertEqual(platform.factories[0].reconnects, 0)
        self.assertEqual((link.counters["heartbeatsIn"], serverLink.counters["heartbeatsIn"]), (0, 0))
        self.assertGreaterEqual(link.counters["heartbeatsOut"] + serverLink.counters["heartbeatsOut"], 3)
        # Every echo sent was answered once: nothing left in flight, nothing late.
        self.assertEqual(self.linkEvents("late-response"), [])
        self.assertEqual(self.linkEvents("heartbeat-timeout"), [])
        self.assertLessEqual(link.inFlight() + serverLink.inFlight(), 2)


class ISO8583TCPLinkSuiteTests(_HostScenarios, suite.TCPLinkSuiteTests):
    codec = "iso8583"


class ISO8583TLSLinkSuiteTests(_HostScenarios, suite.TLSLinkSuiteTests):
    codec = "iso8583"


class CUPSTCPLinkSuiteTests(_HostScenarios, suite.TCPLinkSuiteTests):
    codec = "cups"


class CUPSTLSLinkSuiteTests(_HostScenarios, suite.TLSLinkSuiteTests):
    codec = "cups"
