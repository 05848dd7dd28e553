"""
Tests for L{tvlink.web} (terminal API, status page, service plumbing),
L{tvlink.web.metrics} and L{tvlink.logs}.

The unit tests drive the resources with twisted.web's L{DummyRequest} over
a real L{PlatformService} on a L{MemoryReactorClock}, linked by iosim to
in-memory payment factories (no sockets, no sleeping). The integration
tests at the end drive the terminal API over real HTTP into real payment
processes.
"""

import io
import json
import os
import re
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from tests.helpers import Events, PoolRig
from tests.processes import (
    ROOT,
    TWISTD,
    ReactorTestCase,
    TwistdProcess,
    getReactor,
    spawnTwistd,
    startPayment,
    waitUntil,
    withDeadline,
)
from tests.webkit import FAST, PAN, PlatformWeb, fetch, freePort, tempdir
from tvlink.cli.tap import Options, makeService
from tvlink.link import wire
from tvlink.link.interfaces import IMessageHandler
from tvlink.link.settings import LinkSettings
from tvlink.payment.service import DemoHandler, PaymentService
from tvlink.platform.cardvault import CardVault
from tvlink.platform.factory import PlatformFactory
from tvlink.platform.journal import standing
from tvlink.platform.service import PlatformHandler
from tvlink.testing.faultproxy import FaultProxy
from tvlink.web import (
    HTTPService,
    ServiceStack,
    paymentResource,
    platformResource,
)
from tvlink.web.responses import writeJSON
from tvlink.web.service import parseHTTPEndpoint
from tvlink.web.terminal import TerminalAPI

OTHER_PAN = "6222020000000000026"
MASKED = "622202*********0018"


def render(root, method, path, body=None, args=None, headers=None):
    """
    Render C{method path} on the resource tree C{root} with a
    L{DummyRequest}; return the request (answered or not yet). A body is
    sent as C{application/json} unless C{headers} (C{{name: value}},
    bytes) say otherwise.
    """
    segments = [s.encode("utf-8") for s in path.lstrip("/").split("/")]
    request = DummyRequest(segments)
    request.method = method.encode("ascii")
    if args:
        request.args.update(args)
    if body is not None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        request.content = io.BytesIO(raw)
        request.requestHeaders.setRawHeaders(b"content-length", [str(len(raw)).encode()])
        request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    else:
        request.content = io.BytesIO(b"")
    for name, value in (headers or {}).items():
        if value is None:
            request.requestHeaders.removeHeader(name)
        else:
            request.requestHeaders.setRawHeaders(name, [value])
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def answer(request):
    """
    C{(code, body)} of an answered request; the body parsed if it is
    JSON.
    """
    assert request.finished, "the request has not been answered"
    raw = b"".join(request.written)
    kind = request.responseHeaders.getRawHeaders(b"content-type", [b""])[0]
    code = request.responseCode or 200
    if kind.startswith(b"application/json"):
        return code, json.loads(raw.decode("utf-8"))
    return code, raw.decode("utf-8")


@implementer(IMessageHandler)
class Held:
    """
    A demo account system that applies purchases but holds their answers
    until told (C{release}), or forever.
    """

    def __init__(self, limit=100000):
        self.inner = DemoHandler(limit=limit)
        self.held = []
        self.seen = []

    def handle(self, message):
        self.seen.append(message)
        answer = self.inner.handle(message)
        if message["mti"] == "0200" and message.get("proc") == "000000":
            d = defer.Deferred()
            self.held.append((d, answer))
            return d
        return answer

    def release(self):
        held, self.held = self.held, []
        for d, answer in held:
            d.callback(answer)


@implementer(IMessageHandler)
class Counting:
    """
    The demo account system, keeping every request it saw.
    """

    def __init__(self, limit=100000, refundResp=None):
        self.inner = DemoHandler(limit=limit)
        self.seen = []
        self.refundResp = refundResp

    def handle(self, message):
        self.seen.append(message)
        if message["mti"] == "0220" and self.refundResp is not None:
            return {"resp": self.refundResp}
        return self.inner.handle(message)

    def purchases(self):
        return [m for m in self.seen if m["mti"] == "0200" and m.get("proc") == "000000"]


@implementer(IMessageHandler)
class Balances:
    """
    The demo account system, answering every balance inquiry with
    C{balance}.
    """

    def __init__(self, balance):
        self.inner = DemoHandler(limit=100000)
        self.balance = balance

    def handle(self, message):
        if message["mti"] == "0200" and message.get("proc") == "300000":
            return {"resp": wire.APPROVED, "balance": self.balance}
        return self.inner.handle(message)


class WebRig:
    """
    A started platform with a journal, linked in memory to one payment
    factory, and its web resource tree.
    """

    def __init__(self, testCase, handler=None, journalPath=None, link_wait=0, **options):
        self.handler = handler if handler is not None else Counting()
        if journalPath is None:
            journalPath = os.path.join(tempdir(testCase), "journal.db")
        self.journalPath = journalPath
        options.setdefault("timeout", 2)
        self.pool = PoolRig(ports=(7001,), handlers=[self.handler], journalPath=journalPath, **options)
        self.service = self.pool.service
        self.reactor = self.pool.reactor
        self.root, self.api = platformResource(self.service, link_wait=link_wait)
        testCase.addCleanup(self.close)

    def close(self):
        journal = self.service.journal
        if journal is not None:
            journal.close()

    def call(self, method, path, body=None, args=None, headers=None):
        request = render(self.root, method, path, body, args, headers)
        self.pool.flush()
        return request

    def purchase(self, order="o-1", amount=1234, card=PAN, **extra):
        body = dict(card=card, amount=amount, order=order, **extra)
        return self.call("POST", "/v1/payments", body)


def elsewhere(rig, amount, order="o-1"):
    """
    Journal a purchase of C{order} in flight from another platform process
    sharing C{rig}'s journal; its key.
    """
    message = {
        "mti": "0200", "proc": "000000", "sender": "OTHER", "stan": "000009", "time": "1205120000",
        "pan": PAN, "amount": "%012d" % (amount,), "currency": "156", "order": order,
    }
    rig.service.journal.record(message, newOrder=True)
    return (message["sender"], message["stan"], message["time"])


def countReads(testCase, journal):
    """
    The list of orders C{journal.byOrder} is asked for from now on.
    """
    reads = []
    byOrder = journal.byOrder

    def counted(order, terminal=None):
        reads.append(order)
        return byOrder(order, terminal)

    testCase.patch(journal, "byOrder", counted)
    return reads


class PurchaseTests(SynchronousTestCase):
    def test_approved(self):
        """
        A purchase is sent as a C{0200}/C{000000} with the amount in 12
        digits of fen, and answered C{200} with its state, response code,
        masked card and reference.
        """
        rig = WebRig(self)
        code, body = answer(rig.purchase(amount="1234"))
        self.assertEqual(code, 200)
        self.assertEqual(body["state"], "approved")
        self.assertEqual(body["resp"], "00")
        self.assertEqual(body["order"], "o-1")
        self.assertEqual(body["amount"], 1234)
        self.assertEqual(body["currency"], "156")
        self.assertEqual(body["card"], MASKED)
        self.assertTrue(body["message"])
        [sent] = rig.handler.purchases()
        self.assertEqual((sent["amount"], sent["currency"], sent["order"], sent["pan"]), ("000000001234", "156", "o-1", PAN))
        self.assertEqual(body["reference"], "/".join(wire.messageKey(sent)))

    def test_declined(self):
        """
        A decline is an outcome too: C{200} with state C{declined} and the
        response code explained.
        """
        rig = WebRig(self, handler=Counting(limit=1000))
        code, body = answer(rig.purchase(amount=5000))
        self.assertEqual(code, 200)
        self.assertEqual((body["state"], body["resp"]), ("declined", "51"))
        self.assertIn("insufficient funds", body["message"])

    def test_repeatNeverChargesTwice(self):
        """
        The same order again gets the first outcome (marked C{repeated}),
        and nothing more is sent.
        """
        rig = WebRig(self)
        _, first = answer(rig.purchase())
        code, again = answer(rig.purchase())
        self.assertEqual(code, 200)
        self.assertTrue(again.pop("repeated"))
        self.assertEqual(again, first)
        self.assertEqual(len(rig.handler.purchases()), 1)

    def test_repeatWhileInFlight(self):
        """
        A repeat that arrives while the first is still waiting for its
        answer waits for it and gets the same outcome; one charge.
        """
        handler = Held()
        rig = WebRig(self, handler=handler)
        first = rig.purchase()
        second = rig.purchase()
        self.assertFalse(first.finished)
        self.assertFalse(second.finished)
        handler.release()
        rig.pool.flush()
        _, one = answer(first)
        _, two = answer(second)
        self.assertTrue(two.pop("repeated"))
        self.assertEqual(one, two)
        self.assertEqual(one["state"], "approved")
        self.assertEqual(len([m for m in handler.seen if m["mti"] == "0200"]), 1)

    def test_repeatWithOtherDetails(self):
        """
        An order id reused for another amount or card is refused with
        C{409}, naming the order field, and nothing is sent.
        """
        rig = WebRig(self)
        answer(rig.purchase())
        for changed in ({"amount": 999}, {"card": OTHER_PAN}, {"currency": "840"}):
            body = dict(card=PAN, amount=1234, order="o-1")
            body.update(changed)
            code, error = answer(rig.call("POST", "/v1/payments", body))
            self.assertEqual(code, 409, changed)
            self.assertEqual(error["field"], "order")
        self.assertEqual(len(rig.handler.purchases()), 1)

    def test_repeatAfterRestart(self):
        """
        After a restart the journal answers a repeat: the first outcome,
        and nothing sent to the payment side.
        """
        path = os.path.join(tempdir(self), "journal.db")
        first = WebRig(self, journalPath=path)
        _, before = answer(first.purchase())
        first.close()
        second = WebRig(self, journalPath=path)
        code, after = answer(second.purchase())
        self.assertEqual(code, 200)
        self.assertTrue(after.pop("repeated"))
        self.assertEqual(after, before)
        self.assertEqual(second.handler.seen, [])

    def test_decidedElsewhere(self):
        """
        An order whose purchase another platform process (sharing the
        journal) has in flight is answered when that purchase is decided:
        the journal is read again until then.
        """
        rig = WebRig(self)
        key = elsewhere(rig, amount=1234)
        reads = countReads(self, rig.service.journal)
        request = rig.purchase(amount=1234)
        rig.pool.advance(1, step=0.1)
        self.assertFalse(request.finished)
        self.assertGreater(len(reads), 2)
        rig.service.journal.settle(key, "approved", "00")
        rig.pool.advance(0.2)
        code, body = answer(request)
        self.assertEqual((code, body["state"], body["repeated"]), (200, "approved", True))
        self.assertEqual(rig.handler.purchases(), [])

    def test_decidedElsewhereOtherDetails(self):
        """
        An order another platform process has in flight with other details
        is a conflict at once: its outcome does not matter.
        """
        rig = WebRig(self)
        elsewhere(rig, amount=999)
        code, body = answer(rig.purchase(amount=1234))
        self.assertEqual((code, body["field"]), (409, "order"))

    def test_decidedElsewhereUndecided(self):
        """
        While the other process's purchase stays in flight, the call is
        answered C{504 pending} at its answer time, and the journal is not
        read after that.
        """
        rig = WebRig(self)
        elsewhere(rig, amount=1234)
        reads = countReads(self, rig.service.journal)
        request = rig.purchase(amount=1234)
        rig.pool.advance(rig.api.answerBy(rig.service) + 0.1, step=0.1)
        code, body = answer(request)
        self.assertEqual((code, body["state"]), (504, "pending"))
        seen = len(reads)
        rig.pool.advance(rig.service.terminal_deadline, step=1)
        self.assertEqual(len(reads), seen)

    def test_noLink(self):
        """
        With no ready link the call is answered C{503} at once (nothing
        sent, nothing journalled), and the order can be tried again later.
        """
        rig = WebRig(self)
        rig.pool.kill(7001)
        code, body = answer(rig.purchase())
        self.assertEqual(code, 503)
        self.assertEqual(body["error"], "unavailable")
        self.assertNotIn(PAN, json.dumps(body))
        self.assertEqual(rig.service.journal.store.query("SELECT COUNT(*) FROM entries").result, [(0,)])
        rig.pool.advance(2)
        rig.pool.connectPending()
        code, body = answer(rig.purchase())
        self.assertEqual((code, body["state"]), (200, "approved"))

    def test_noLinkWaits(self):
        """
        With C{link_wait} the call waits that long for a link before its
        C{503}.
        """
        rig = WebRig(self, link_wait=1.5)
        rig.pool.kill(7001)
        request = rig.purchase()
        rig.reactor.advance(1.4)
        self.assertFalse(request.finished)
        rig.reactor.advance(0.2)
        self.assertEqual(answer(request)[0], 503)

    def test_neverSentMayBeRetried(self):
        """
        A purchase the platform declined itself before sending (C{91} with
        a reason) does not decide its order; anything the payment side
        answered does.
        """
        def entry(state, resp, reason):
            return {"state": state, "resp": resp, "reason": reason}

        unsent = entry("declined", "91", "no payment link available")
        self.assertIsNone(standing([unsent]))
        answered91 = entry("declined", "91", None)
        self.assertIs(standing([unsent, answered91]), answered91)

    def test_timedOutThenReversed(self):
        """
        A purchase whose answer never comes is answered C{504}, in doubt and
        being reversed; once the reversal is acknowledged the order reads
        C{reversed}, and the money is back.
        """
        handler = Held()
        rig = WebRig(self, handler=handler)
        request = rig.purchase()
        rig.pool.advance(2.5, step=0.25)
        code, body = answer(request)
        self.assertEqual(code, 504)
        self.assertEqual(body["state"], "in-doubt")
        self.assertIn("reversed", body["message"])
        rig.pool.advance(1, step=0.25)
        code, body = answer(rig.call("GET", "/v1/payments/o-1"))
        self.assertEqual((code, body["state"]), (200, "reversed"))
        self.assertEqual(handler.inner.spent.get(PAN), 0)
        reversals = [m for m in handler.seen if m["mti"] == "0420"]
        self.assertEqual(reversals[0]["orig"]["stan"], body["reference"].split("/")[1])
        # A repeat now gets the recorded outcome: reversed, not charged.
        code, body = answer(rig.purchase())
        self.assertEqual((code, body["state"]), (200, "reversed"))
        self.assertIn("not charged", body["message"])

    def test_deadline(self):
        """
        Whatever happens behind it, a call is answered before the
        terminal's deadline: C{504 pending}.
        """

        class Journal:
            def byOrder(self, order, terminal=None):
                return defer.succeed([])

        class Stuck:
            role = "platform"
            running = True
            stopping = False
            terminal_deadline = 60.0
            journal = Journal()

            def __init__(self):
                self.reactor = Clock()
                self.settings = LinkSettings(reactor=self.reactor, timeout=40)

            def candidates(self):
                return [object()]

            def request(self, message, timeout=None, terminal=None, newOrder=False):
                return defer.Deferred()

        service = Stuck()
        from tvlink.web.resources import V1Resource

        api = TerminalAPI(service)
        root = V1Resource(api)
        request = render(root, "POST", "/payments", {"card": PAN, "amount": 1, "order": "x"})
        deadline = api.answerBy(service)
        self.assertTrue(40 < deadline < 60, deadline)
        service.reactor.advance(deadline - 0.01)
        self.assertFalse(request.finished)
        service.reactor.advance(0.02)
        code, body = answer(request)
        self.assertEqual((code, body["state"], body["order"]), (504, "pending", "x"))


class InputTests(SynchronousTestCase):
    def test_badInputNamesTheField(self):
        """
        Invalid input is answered C{400} with a message naming the field,
        and nothing is sent.
        """
        rig = WebRig(self)
        good = {"card": PAN, "amount": 100, "order": "o-9"}
        cases = [
            ({"card": None}, "card"),
            ({"card": "1234"}, "card"),
            ({"card": "62220200000000000189999"}, "card"),
            ({"card": 6222020000000000018}, "card"),
            ({"card": "6222-0200-0000-0018"}, "card"),
            ({"amount": None}, "amount"),
            ({"amount": 0}, "amount"),
            ({"amount": -5}, "amount"),
            ({"amount": 12.5}, "amount"),
            ({"amount": "12.50"}, "amount"),
            ({"amount": "1000000000000"}, "amount"),
            ({"amount": 10 ** 12}, "amount"),
            ({"amount": True}, "amount"),
            ({"currency": "15"}, "currency"),
            ({"currency": "CNY"}, "currency"),
            ({"order": None}, "order"),
            ({"order": ""}, "order"),
            ({"order": "x" * 65}, "order"),
            ({"order": "a\nb"}, "order"),
        ]
        for change, field in cases:
            body = dict(good)
            body.update(change)
            body = {k: v for k, v in body.items() if v is not None}
            code, error = answer(rig.call("POST", "/v1/payments", body))
            self.assertEqual(code, 400, change)
            self.assertEqual(error["field"], field, change)
            self.assertIn(field, error["message"], change)
        for raw in (b"", b"not json", b"[1, 2]", b'{"amount": NaN}'):
            code, error = answer(rig.call("POST", "/v1/payments", raw))
            self.assertEqual((code, error["field"]), (400, "body"), raw)
        self.assertEqual(rig.handler.seen, [])

    def test_amountForms(self):
        """
        An amount may be a JSON integer or a string of digits; a currency
        an integer or 3 digits.
        """
        rig = WebRig(self, handler=Counting(limit=10 ** 13))
        for i, (amount, currency) in enumerate([(1, None), ("000000000002", "156"), (999999999999, 156)]):
            body = {"card": PAN, "amount": amount, "order": "a-%d" % i}
            if currency is not None:
                body["currency"] = currency
            code, reply = answer(rig.call("POST", "/v1/payments", body))
            self.assertEqual((code, reply["state"]), (200, "approved"), amount)
        self.assertEqual([m["amount"] for m in rig.handler.purchases()], ["000000000001", "000000000002", "999999999999"])

    def test_tooLarge(self):
        rig = WebRig(self)
        code, error = answer(rig.call("POST", "/v1/payments", b"{" + b" " * 20000 + b"}"))
        self.assertEqual((code, error["error"]), (413, "too-large"))

    def test_methodsAndPaths(self):
        """
        Wrong methods get C{405} and unknown paths under C{/v1} C{404},
        both in JSON.
        """
        rig = WebRig(self)
        code, error = answer(rig.call("GET", "/v1/payments"))
        self.assertEqual((code, error["error"]), (405, "method-not-allowed"))
        code, error = answer(rig.call("GET", "/v1/nothing"))
        self.assertEqual((code, error["error"]), (404, "not-found"))
        code, error = answer(rig.call("GET", "/v1/payments/o-1/refund/more"))
        self.assertEqual(code, 404)
        code, error = answer(rig.call("GET", "/v1/payments/" + "x" * 65))
        self.assertEqual(code, 404)


class OutcomeAndRefundTests(SynchronousTestCase):
    def test_outcome(self):
        """
        C{GET /v1/payments/ORDER} reads the journal: the purchase and its
        refunds; an unknown order is C{404}.
        """
        rig = WebRig(self)
        _, bought = answer(rig.purchase(amount=1000))
        code, body = answer(rig.call("GET", "/v1/payments/o-1"))
        self.assertEqual(code, 200)
        self.assertEqual(body, bought)
        answer(rig.call("POST", "/v1/payments/o-1/refund", {"amount": 300}))
        code, body = answer(rig.call("GET", "/v1/payments/o-1"))
        self.assertEqual(body["refunded"], 300)
        self.assertEqual([(r["state"], r["amount"]) for r in body["refunds"]], [("approved", 300)])
        code, body = answer(rig.call("GET", "/v1/payments/nope"))
        self.assertEqual((code, body["field"]), (404, "order"))

    def test_refund(self):
        """
        A refund is a C{0220}/C{200000} naming the purchase in C{orig},
        with the card remembered from the purchase.
        """
        rig = WebRig(self)
        _, bought = answer(rig.purchase(amount=1000))
        code, body = answer(rig.call("POST", "/v1/payments/o-1/refund", {"amount": "250"}))
        self.assertEqual((code, body["state"], body["type"], body["amount"]), (200, "approved", "refund", 250))
        self.assertEqual(body["original"], bought["reference"])
        self.assertEqual(body["card"], MASKED)
        [refund] = [m for m in rig.handler.seen if m["mti"] == "0220"]
        self.assertEqual(refund["proc"], "200000")
        self.assertEqual(refund["amount"], "000000000250")
        self.assertEqual(refund["pan"], PAN)
        self.assertEqual("/".join((refund["orig"]["sender"], refund["orig"]["stan"], refund["orig"]["time"])), bought["reference"])
        self.assertEqual(refund["orig"]["mti"], "0200")
        self.assertEqual(rig.handler.inner.spent[PAN], 750)

    def test_refundCardSealed(self):
        """
        With a card key the journal keeps the purchase's card sealed, so a
        refund after a restart carries it without the terminal giving it;
        under another key it does not open, and the card is asked for.
        """
        path = os.path.join(tempdir(self), "journal.db")
        vault = CardVault(os.urandom(32))
        first = WebRig(self, journalPath=path, vault=vault)
        answer(first.purchase(amount=1000))
        first.close()
        other = WebRig(self, journalPath=path, vault=CardVault(os.urandom(32)))
        other.pool.advance(1)
        events = Events(self)
        code, body = answer(other.call("POST", "/v1/payments/o-1/refund", {"amount": 1}))
        self.assertEqual((code, body["field"]), (400, "card"))
        [refused] = [e for e in events.events if e.get("journal_event") == "card-unopened"]
        self.assertEqual(refused["purpose"], "refund")
        self.assertNotIn(PAN, str(refused))
        other.close()
        rig = WebRig(self, journalPath=path, vault=vault)
        rig.pool.advance(2)
        code, body = answer(rig.call("POST", "/v1/payments/o-1/refund", {"amount": 100}))
        self.assertEqual((code, body.get("state")), (200, "approved"), body)
        [refund] = [m for m in rig.handler.seen if m["mti"] == "0220"]
        self.assertEqual(refund["pan"], PAN)

    def test_refundOverTheOriginal(self):
        """
        The payment side's C{13} to a refund over what is left of the
        purchase is an outcome: C{200}, declined, C{13}.
        """
        rig = WebRig(self, handler=Counting(refundResp="13"))
        answer(rig.purchase(amount=1000))
        code, body = answer(rig.call("POST", "/v1/payments/o-1/refund", {"amount": 5000}))
        self.assertEqual((code, body["state"], body["resp"]), (200, "declined", "13"))
        self.assertIn("invalid amount", body["message"])

    def test_refundNeedsAnApprovedPurchase(self):
        rig = WebRig(self, handler=Counting(limit=10))
        code, body = answer(rig.call("POST", "/v1/payments/none/refund", {"amount": 1}))
        self.assertEqual(code, 404)
        answer(rig.purchase(amount=1000))
        code, body = answer(rig.call("POST", "/v1/payments/o-1/refund", {"amount": 1}))
        self.assertEqual(code, 404)
        self.assertIn("declined", body["message"])

    def test_refundCard(self):
        """
        After a restart the card is not known (the journal keeps it
        masked): the refund must carry it, and it must be the purchase's.
        """
        path = os.path.join(tempdir(self), "journal.db")
        first = WebRig(self, journalPath=path)
        answer(first.purchase(amount=1000))
        first.close()
        rig = WebRig(self, journalPath=path)
        # A restart takes time: the new run's keys (STANs start again) carry
        # a later transmission time.
        rig.pool.advance(1)
        code, body = answer(rig.call("POST", "/v1/payments/o-1/refund", {"amount": 1}))
        self.assertEqual((code, body["field"]), (400, "card"))
        code, body = answer(rig.call("POST", "/v1/payments/o-1/refund", {"amount": 1, "card": OTHER_PAN}))
        self.assertEqual((code, body["field"]), (400, "card"))
        code, body = answer(rig.call("POST", "/v1/payments/o-1/refund", {"amount": 1, "card": PAN}))
        self.assertEqual((code, body.get("state")), (200, "approved"), body)

    def test_balance(self):
        rig = WebRig(self)
        answer(rig.purchase(amount=1234))
        code, body = answer(rig.call("POST", "/v1/balance", {"card": PAN}))
        self.assertEqual(code, 200)
        self.assertEqual((body["state"], body["balance"], body["card"]), ("approved", 100000 - 1234, MASKED))
        code, body = answer(rig.call("POST", "/v1/balance", {"card": "12"}))
        self.assertEqual((code, body["field"]), (400, "card"))

    def test_balanceOutOfRange(self):
        """
        A balance the payment side answers that no amount can be (past 12
        digits, negative, not a number) is a declined inquiry, answered:
        it does not stop the answer (a number past 64 bits cannot be
        written as JSON).
        """
        for balance in ("9" * 30, 10**12, "-1", True, "12.5"):
            rig = WebRig(self, handler=Balances(balance))
            code, body = answer(rig.call("POST", "/v1/balance", {"card": PAN}))
            self.assertEqual((code, body["state"], body["resp"]), (200, "declined", "00"), balance)
            self.assertNotIn("balance", body)
        rig = WebRig(self, handler=Balances("999999999999"))
        code, body = answer(rig.call("POST", "/v1/balance", {"card": PAN}))
        self.assertEqual((code, body["balance"]), (200, wire.MAX_AMOUNT))

    def test_unwritableAnswer(self):
        """
        An answer whose body cannot be written as JSON is still an answer:
        C{500}, and the log says why.
        """
        request = DummyRequest([b"v1", b"balance"])
        writeJSON(request, 200, {"balance": 2**70})
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(json.loads(b"".join(request.written))["error"], "error")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_noCardInAnyAnswer(self):
        """
        No answer of the API carries a card number unmasked.
        """
        rig = WebRig(self)
        replies = [
            rig.purchase(),
            rig.purchase(),
            rig.call("GET", "/v1/payments/o-1"),
            rig.call("POST", "/v1/payments/o-1/refund", {"amount": 1}),
            rig.call("POST", "/v1/balance", {"card": PAN}),
            rig.call("POST", "/v1/payments", {"card": PAN, "amount": 0, "order": "z"}),
            rig.call("GET", "/status.json"),
            rig.call("GET", "/"),
        ]
        for request in replies:
            self.assertNotIn(PAN.encode(), b"".join(request.written))


class StatusTests(SynchronousTestCase):
    def test_platformStatus(self):
        """
        C{/status.json} lists each link slot with its state, and the page
        shows the same for a person.
        """
        rig = WebRig(self)
        answer(rig.purchase())
        code, data = answer(rig.call("GET", "/status.json"))
        self.assertEqual(code, 200)
        self.assertEqual(data["role"], "platform")
        [link] = data["links"]
        self.assertEqual((link["endpoint"], link["state"]), ("127.0.0.1:7001", "ready"))
        for key in ("sinceFrameIn", "sinceFrameOut", "inFlight", "rttP50ms", "rttP99ms", "timeouts", "reconnects", "violations"):
            self.assertIn(key, link)
        self.assertEqual(data["journal"], {"approved": 1})
        self.assertEqual(data["database"]["up"], True)
        code, page = answer(rig.call("GET", "/"))
        self.assertEqual(code, 200)
        self.assertIn("database %s up (reconnected 0 times)" % (data["database"]["where"],), page)
        rig.service.journal.store.databaseUp = False
        _, page = answer(rig.call("GET", "/"))
        self.assertIn("DOWN, answers wait", page)
        rig.service.journal.store.databaseUp = True
        self.assertIn('data-endpoint="127.0.0.1:7001" data-state="ready"', page)
        self.assertIn('<meta http-equiv="refresh" content="5">', page)
        self.assertIn("link ready", page)
        rig.pool.kill(7001)
        _, page = answer(rig.call("GET", "/", args={b"refresh": [b"0"]}))
        self.assertIn('data-state="connecting"', page)
        self.assertIn("no links ready", page)
        self.assertNotIn("http-equiv", page)

    def test_paymentStatus(self):
        """
        A payment node's status lists the connected platforms, by the id
        they signed on with.
        """
        pair = PaymentPair(self)
        code, data = answer(render(pair.root, "GET", "/status.json"))
        self.assertEqual(data["role"], "payment")
        [link] = data["links"]
        self.assertEqual((link["platform"], link["state"]), ("TV01", "ready"))
        _, page = answer(render(pair.root, "GET", "/"))
        self.assertIn('data-state="ready"', page)
        self.assertIn("TV01", page)
        pair.client.close()
        pair.pump.flush()
        _, page = answer(render(pair.root, "GET", "/"))
        self.assertIn("No platform is connected", page)


class PaymentPair:
    """
    A started payment service on a MemoryReactorClock with its web tree,
    and one platform link to it over iosim.
    """

    def __init__(self, testCase):
        self.reactor = MemoryReactorClock()
        self.service = PaymentService("tcp:7000:interface=127.0.0.1", reactor=self.reactor)
        self.service.startService()
        self.root = paymentResource(self.service)
        settings = LinkSettings(reactor=self.reactor, sender="TV01")
        self.factory = PlatformFactory("127.0.0.1:7000", settings, PlatformHandler())
        self.server = self.service.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.client = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
        self.pump = iosim.connect(
            self.server, iosim.makeFakeServer(self.server), self.client, iosim.makeFakeClient(self.client),
            clock=self.reactor,
        )
        self.pump.flush()

    def request(self, message):
        d = self.client.request(message)
        self.pump.flush()
        return d


def metrics(root, path="/metrics"):
    code, text = answer(render(root, "GET", path))
    assert code == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsTests(SynchronousTestCase):
    def test_platform(self):
        """
        C{/metrics} has links by state, API calls by type and result,
        round trips, heartbeats, timeouts, reversals outstanding and the
        journal's commits.
        """
        rig = WebRig(self)
        answer(rig.purchase())
        answer(rig.call("POST", "/v1/payments", {"card": "1"}))
        rig.pool.advance(60, step=5)
        samples = metrics(rig.root)
        endpoint = ("endpoint", "127.0.0.1:7001")
        self.assertEqual(samples[("tvlink_links", (("state", "ready"),))], 1)
        self.assertEqual(samples[("tvlink_requests_total", (("result", "approved"), ("type", "purchase")))], 1)
        self.assertEqual(samples[("tvlink_requests_total", (("result", "invalid"), ("type", "purchase")))], 1)
        # Sign-on and purchase were sent; the sign-on was answered before
        # the collector was there to time it.
        self.assertEqual(samples[("tvlink_round_trip_seconds_count", (endpoint,))], 1)
        self.assertEqual(samples[("tvlink_requests_sent_total", (endpoint,))], 2)
        self.assertGreaterEqual(samples[("tvlink_heartbeats_total", (("direction", "out"), endpoint))], 1)
        self.assertEqual(samples[("tvlink_timeouts_total", (endpoint,))], 0)
        self.assertEqual(samples[("tvlink_violations_total", (endpoint,))], 0)
        self.assertEqual(samples[("tvlink_reversals_outstanding", ())], 0)
        self.assertEqual(samples[("tvlink_journal_entries", (("state", "approved"),))], 1)
        self.assertGreaterEqual(samples[("tvlink_store_commits_total", (("store", "journal"),))], 2)
        self.assertEqual(
            samples[("tvlink_store_commit_batch_size_count", (("store", "journal"),))],
            samples[("tvlink_store_commits_total", (("store", "journal"),))],
        )
        self.assertEqual(samples[("tvlink_store_database_up", (("store", "journal"),))], 1)
        self.assertEqual(samples[("tvlink_store_reconnects_total", (("store", "journal"),))], 0)
        self.assertEqual(samples[("tvlink_store_retried_batches_total", (("store", "journal"),))], 0)

    def test_payment(self):
        """
        A payment node counts requests by type and response code, and
        keeps the counts of links that have closed.
        """
        pair = PaymentPair(self)
        for amount in ("000000000100", "000000000200"):
            pair.request({"mti": "0200", "proc": "000000", "pan": PAN, "amount": amount, "currency": "156"})
        pair.request({"mti": "0200", "proc": "000000", "pan": "1", "amount": "000000000100"})
        samples = metrics(pair.root)
        self.assertEqual(samples[("tvlink_requests_total", (("result", "00"), ("type", "purchase")))], 2)
        self.assertEqual(samples[("tvlink_requests_total", (("result", "14"), ("type", "purchase")))], 1)
        self.assertEqual(samples[("tvlink_handler_seconds_count", (("type", "purchase"),))], 3)
        self.assertEqual(samples[("tvlink_links", (("state", "ready"),))], 1)
        received = samples[("tvlink_requests_received_total", (("platform", "TV01"),))]
        self.assertEqual(received, 4)
        pair.client.close()
        pair.pump.flush()
        samples = metrics(pair.root)
        self.assertEqual(samples[("tvlink_links", (("state", "ready"),))], 0)
        self.assertEqual(samples[("tvlink_requests_received_total", (("platform", "TV01"),))], received)

    def test_registriesAreSeparate(self):
        """
        Each service has its own registry: two in one process do not
        clash, and neither is the global default.
        """
        from prometheus_client import REGISTRY

        first = WebRig(self)
        second = PaymentPair(self)
        self.assertIsNot(first.root.registry, REGISTRY)
        self.assertIsNot(first.root.registry, second.root.registry)
        self.assertIn(("tvlink_info", (("role", "platform"), ("sender", "PLATFORM"))), metrics(first.root))
        self.assertIn(("tvlink_info", (("role", "payment"), ("sender", "PAYMENT"))), metrics(second.root))


class PlumbingTests(SynchronousTestCase):
    def test_parseHTTPEndpoint(self):
        self.assertEqual(parseHTTPEndpoint("8080"), "tcp:8080:interface=127.0.0.1")
        self.assertEqual(parseHTTPEndpoint("tcp:0:interface=127.0.0.1"), "tcp:0:interface=127.0.0.1")
        for bad in ("", "99999", "bogus:1", "tcp:notaport"):
            self.assertRaises(ValueError, parseHTTPEndpoint, bad)

    def test_tapOptions(self):
        """
        C{--http} on each role: the platform's service is stacked behind an
        L{HTTPService} and gets the default journal when none is named;
        the sandbox serves on 127.0.0.1:8080 unless moved.
        """
        config = Options()
        config.parseOptions(["platform", "--connect", "127.0.0.1:7000", "--http", "tcp:0:interface=127.0.0.1"])
        stack = makeService(config, reactor=MemoryReactorClock())
        self.assertIsInstance(stack, ServiceStack)
        self.assertEqual(stack.service._journalOption, "sqlite:tvlink-journal.db")
        self.assertIsInstance(stack.web, HTTPService)
        self.assertEqual([type(s) for s in stack], [type(stack.service), HTTPService])
        config = Options()
        config.parseOptions(["payment", "--listen", "tcp:0", "--http", "9090"])
        stack = makeService(config, reactor=MemoryReactorClock())
        self.assertEqual(stack.web.description, "tcp:9090:interface=127.0.0.1")
        config = Options()
        config.parseOptions(["sandbox"])
        self.assertEqual(config.subOptions.http, "tcp:8080:interface=127.0.0.1")
        config = Options()
        config.parseOptions(["platform", "--connect", "h:1"])
        self.assertIsNone(config.subOptions.http)
        from twisted.python.usage import UsageError

        for argv in (["platform", "--connect", "h:1", "--http", "nope:1"], ["payment", "--listen", "tcp:0", "--http", "x"]):
            error = self.assertRaises(UsageError, Options().parseOptions, argv)
            self.assertIn("--http", str(error))

    def test_stackStopsInOrder(self):
        """
        A L{ServiceStack} stops its children one after the other, the last
        added first, each once the one after it has stopped.
        """
        events = []
        gates = {}

        class Recorded(Service):
            def __init__(self, name):
                self.name = name

            def stopService(self):
                Service.stopService(self)
                events.append("stop " + self.name)
                gates[self.name] = defer.Deferred()
                return gates[self.name]

        stack = ServiceStack()
        Recorded("link").setServiceParent(stack)
        Recorded("web").setServiceParent(stack)
        stack.startService()
        stopped = stack.stopService()
        self.assertEqual(events, ["stop web"])
        gates["web"].callback(None)
        self.assertEqual(events, ["stop web", "stop link"])
        self.assertNoResult(stopped)
        gates["link"].callback(None)
        self.successResultOf(stopped)


class LogTests(SynchronousTestCase):
    def test_jsonLines(self):
        """
        L{tvlink.logs.json} gives one JSON object per line, its card
        numbers masked.
        """
        from twisted.logger import ILogObserver

        from tvlink.logs import JSONLinesObserver
        from tvlink.logs import json as jsonLogger
        from tvlink.masking import MaskingObserver

        self.assertTrue(ILogObserver.providedBy(jsonLogger()))
        out = io.StringIO()
        observer = MaskingObserver(JSONLinesObserver(out))
        observer(
            {
                "log_format": "card {pan} answered {resp}",
                "log_level": LogLevel.warn,
                "log_namespace": "tvlink.test",
                "log_time": 1700000000.25,
                "pan": PAN,
                "resp": "00",
                "link_event": "test",
                "obj": object(),
            }
        )
        [line] = out.getvalue().splitlines()
        event = json.loads(line)
        self.assertEqual(event["level"], "warn")
        self.assertEqual(event["namespace"], "tvlink.test")
        self.assertEqual(event["message"], "card %s answered 00" % (MASKED,))
        self.assertEqual(event["pan"], MASKED)
        self.assertEqual(event["link_event"], "test")
        self.assertTrue(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.250[+-]\d\d:\d\d$", event["time"]), event["time"])
        self.assertNotIn(PAN, out.getvalue())


# -- integration: real HTTP into real payment processes ----------------------


#: The demo handler's limit per card, in fen.
LIMIT = 100000


class TerminalAPIIntegrationTests(ReactorTestCase, PlatformWeb):
    """
    The terminal API over real HTTP, through an in-test platform, into a
    real C{twistd tvlink payment} process.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_purchaseRepeatRefundBalance(self):
        """
        A purchase is charged once however often it is repeated (one after
        the other, or at the same time); a refund gives money back; the
        payment side's balance shows exactly that; bad input is C{400}
        naming the field.
        """
        child, port = yield startPayment(self, *FAST)
        service, url = yield self.platformWeb(port)
        self.assertEqual((yield self.balance(url)), LIMIT)
        purchase = {"card": PAN, "amount": 1234, "order": "it-1"}
        code, first = yield fetch("POST", url + "v1/payments", purchase)
        self.assertEqual((code, first["state"], first["resp"]), (200, "approved", "00"), first)
        self.assertEqual(first["card"], MASKED)
        code, again = yield fetch("POST", url + "v1/payments", purchase)
        self.assertEqual(code, 200)
        self.assertTrue(again.pop("repeated"))
        self.assertEqual(again, first)
        self.assertEqual((yield self.balance(url)), LIMIT - 1234)
        # Two at once, for a new order: one charge, one outcome.
        twice = {"card": PAN, "amount": "500", "order": "it-2"}
        results = yield defer.gatherResults([fetch("POST", url + "v1/payments", twice) for _ in range(2)])
        self.assertEqual([code for code, _ in results], [200, 200])
        self.assertEqual(len({body["reference"] for _, body in results}), 1)
        self.assertEqual(sorted(bool(body.get("repeated")) for _, body in results), [False, True])
        self.assertEqual((yield self.balance(url)), LIMIT - 1734)
        # Refund part of the first.
        code, refund = yield fetch("POST", url + "v1/payments/it-1/refund", {"amount": 234})
        self.assertEqual((code, refund["state"], refund["original"]), (200, "approved", first["reference"]), refund)
        self.assertEqual((yield self.balance(url)), LIMIT - 1500)
        code, outcome = yield fetch("GET", url + "v1/payments/it-1")
        self.assertEqual((code, outcome["state"], outcome["refunded"]), (200, "approved", 234))
        code, missing = yield fetch("GET", url + "v1/payments/nope")
        self.assertEqual(code, 404)
        code, missing = yield fetch("POST", url + "v1/payments/nope/refund", {"amount": 1})
        self.assertEqual(code, 404)
        for body, field in (
            ({"card": "12", "amount": 1, "order": "b"}, "card"),
            ({"card": PAN, "amount": -1, "order": "b"}, "amount"),
            ({"card": PAN, "amount": 1, "currency": "1", "order": "b"}, "currency"),
            ({"card": PAN, "amount": 1}, "order"),
        ):
            code, error = yield fetch("POST", url + "v1/payments", body)
            self.assertEqual((code, error["field"]), (400, field), body)
        code, error = yield fetch("POST", url + "v1/payments", b"{not json")
        self.assertEqual((code, error["field"]), (400, "body"))
        self.assertEqual((yield self.balance(url)), LIMIT - 1500)

    @defer.inlineCallbacks
    def test_paymentNodeDown(self):
        """
        With the payment node killed, a purchase is answered C{503} within
        the link wait, nothing charged; the status shows the link
        reconnecting.
        """
        child, port = yield startPayment(self, *FAST)
        service, url = yield self.platformWeb(port, link_wait=0.5)
        child.signal("KILL")
        yield child.whenEnded(10)
        yield waitUntil(lambda: not service.readyLinks(), 10, "the platform to see the link gone")
        started = getReactor().seconds()
        code, body = yield fetch("POST", url + "v1/payments", {"card": PAN, "amount": 100, "order": "down-1"})
        self.assertEqual((code, body["error"]), (503, "unavailable"), body)
        self.assertLess(getReactor().seconds() - started, 5)
        self.assertNotIn(PAN, json.dumps(body))
        code, status = yield fetch("GET", url + "status.json")
        self.assertEqual(status["links"][0]["state"], "connecting")
        # Nothing was sent, so the order is free to be tried again later.
        code, body = yield fetch("GET", url + "v1/payments/down-1")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_neverConnected(self):
        """
        A platform whose payment endpoint never answered says C{503}.
        """
        service, url = yield self.platformWeb(freePort(), link_wait=0.2, ready=False)
        code, body = yield fetch("POST", url + "v1/payments", {"card": PAN, "amount": 100, "order": "x"})
        self.assertEqual(code, 503)

    @defer.inlineCallbacks
    def test_blackHoled(self):
        """
        Answers black-holed: the purchase (applied by the payment node) is
        answered C{504}, in doubt; once the path is back the reversal goes
        through, the order reads C{reversed}, and the balance is whole.
        """
        child, port = yield startPayment(self, *FAST)
        proxy = FaultProxy("127.0.0.1", port)
        proxyPort = yield proxy.start()
        self.addCleanup(proxy.stop)
        service, url = yield self.platformWeb(proxyPort, idle_timeout=2)
        self.assertEqual((yield self.balance(url)), LIMIT)
        proxy.setMode("blackhole", direction="down")
        code, body = yield fetch("POST", url + "v1/payments", {"card": PAN, "amount": 777, "order": "bh-1"})
        self.assertEqual((code, body["state"]), (504, "in-doubt"), body)
        self.assertIn("reversed", body["message"])
        proxy.setMode("pass")

        yield eventually(self, lambda: fetch("GET", url + "v1/payments/bh-1"),
                         lambda result: result[1]["state"] == "reversed", 30, "the purchase to be reversed")
        yield withDeadline(service.whenReady(), 10, "the link back")
        self.assertEqual((yield self.balance(url)), LIMIT)
        code, body = yield fetch("POST", url + "v1/payments", {"card": PAN, "amount": 777, "order": "bh-1"})
        self.assertEqual((code, body["state"]), (200, "reversed"))

    @defer.inlineCallbacks
    def test_refundOverTheOriginalOnTheLedger(self):
        """
        On the SQLite ledger, a refund over what is left of the purchase is
        declined by the payment side with C{13}: answered C{200}, declined.
        """
        ledger = os.path.join(tempdir(self), "ledger.db")
        for command in (["init"], ["open", PAN, "50000"]):
            done = yield runCommand(self, [sys.executable, "-m", "tvlink", "ledger", "--db", ledger] + command)
            self.assertEqual(done.status, 0, done.tail())
        child, port = yield startPayment(self, "--ledger", "sqlite:" + ledger, *FAST)
        service, url = yield self.platformWeb(port)
        code, body = yield fetch("POST", url + "v1/payments", {"card": PAN, "amount": 1000, "order": "l-1"})
        self.assertEqual((code, body["state"]), (200, "approved"), body)
        code, body = yield fetch("POST", url + "v1/payments/l-1/refund", {"amount": 1001})
        self.assertEqual((code, body["state"], body["resp"]), (200, "declined", "13"), body)
        code, body = yield fetch("POST", url + "v1/payments/l-1/refund", {"amount": 1000})
        self.assertEqual((code, body["state"]), (200, "approved"), body)
        self.assertEqual((yield self.balance(url)), 50000)


@defer.inlineCallbacks
def eventually(testCase, probe, done, seconds, what, interval=0.5):
    """
    Call C{probe()} (a Deferred) every C{interval} seconds of reactor time
    until C{done(result)}; fail after C{seconds}. Fires with the result.
    """
    from twisted.internet.task import deferLater

    deadline = getReactor().seconds() + seconds
    while True:
        result = yield probe()
        if done(result):
            return result
        if getReactor().seconds() > deadline:
            testCase.fail("%s: not after %.0fs (last: %r)" % (what, seconds, result))
        yield deferLater(getReactor(), interval, lambda: None)


@defer.inlineCallbacks
def runCommand(testCase, argv, seconds=20.0):
    """
    Run C{argv} to its end (bounded); fire with its L{TwistdProcess}.
    """
    child = TwistdProcess(" ".join(argv[1:3]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    getReactor().spawnProcess(child, argv[0], argv, env=env, path=ROOT)
    testCase.addCleanup(child.stop)
    yield child.whenEnded(seconds)
    return child


def spawnTwistdWith(testCase, twistdArgs, args, name):
    """
    Like L{spawnTwistd}, with options for twistd itself (before C{tvlink}).
    """
    cwd = tempdir(testCase)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    child = TwistdProcess(name)
    argv = TWISTD + ["-n", "--pidfile="] + list(twistdArgs) + ["tvlink"] + [str(a) for a in args]
    getReactor().spawnProcess(child, sys.executable, argv, env=env, path=cwd)
    testCase.addCleanup(child.stop)
    return child


class ProcessTests(ReactorTestCase, PlatformWeb):
    """
    The web side of real C{twistd tvlink} processes.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_platformStopsGracefully(self):
        """
        C{twistd tvlink platform --http} with JSON logs: SIGTERM while a
        purchase is in flight closes the HTTP port first, lets the purchase
        finish and be answered, then drains the link and exits 0. Every
        line of output is JSON, and no card number is in any of them.
        """
        payment, port = yield startPayment(self, *FAST)
        proxy = FaultProxy("127.0.0.1", port)
        proxyPort = yield proxy.start()
        self.addCleanup(proxy.stop)
        journal = os.path.join(tempdir(self), "journal.db")
        child = spawnTwistdWith(
            self,
            ["--logger", "tvlink.logs.json"],
            ["platform", "--connect", "127.0.0.1:%d" % (proxyPort,), "--http", "tcp:0:interface=127.0.0.1",
             "--journal", "sqlite:" + journal, "--timeout", "10"],
            "platform",
        )
        match = yield child.waitFor(r"web listening on http://127\.0\.0\.1:(\d+)/", 15)
        webPort = int(match.group(1))
        yield child.waitFor(r"link 127\.0\.0\.1:%d ready \(platform\)" % (proxyPort,), 15)
        url = "http://127.0.0.1:%d/" % (webPort,)
        proxy.setMode("delay", seconds=1.0)
        before = proxy.bytesUp
        purchase = fetch("POST", url + "v1/payments", {"card": PAN, "amount": 4321, "order": "term-1"})
        yield waitUntil(lambda: proxy.bytesUp > before, 10, "the purchase to reach the link")
        mark = child.mark()
        child.signal("TERM")
        yield child.waitFor(r"web stopped listening", 10, after=mark)
        refused = yield _connectRefused(webPort)
        self.assertTrue(refused, "the HTTP port still accepts connections after SIGTERM")
        code, body = yield purchase
        self.assertEqual((code, body["state"]), (200, "approved"), body)
        status = yield child.whenEnded(30)
        self.assertEqual(status, 0, child.tail())
        stopped = child.find(r"web stopped listening", mark)
        drained = [i for i, line in enumerate(child.lines) if "drained" in line and i >= mark]
        self.assertTrue(stopped and drained, child.tail())
        self.assertLess(min(i for i, line in enumerate(child.lines) if "web stopped listening" in line), min(drained))
        for line in child.stdout:
            if line.strip():
                event = json.loads(line)
                self.assertIn("message", event)
        self.assertNotIn(PAN, "\n".join(child.lines))

    @defer.inlineCallbacks
    def test_paymentStatusPage(self):
        """
        C{twistd tvlink payment --http} serves its status (the connected
        platform) and metrics.
        """
        child, port = yield startPayment(self, "--http", "tcp:0:interface=127.0.0.1", *FAST)
        match = yield child.waitFor(r"web listening on http://127\.0\.0\.1:(\d+)/", 10)
        url = "http://127.0.0.1:%s/" % (match.group(1),)
        service, platformUrl = yield self.platformWeb(port)
        yield fetch("POST", platformUrl + "v1/payments", {"card": PAN, "amount": 1, "order": "p-1"})
        code, status = yield fetch("GET", url + "status.json")
        self.assertEqual(code, 200)
        [link] = status["links"]
        self.assertEqual((link["platform"], link["state"]), ("PLATFORM", "ready"))
        code, text = yield fetch("GET", url + "metrics")
        self.assertIn('tvlink_requests_total{result="00",type="purchase"} 1.0', text)

    @defer.inlineCallbacks
    def test_sandbox(self):
        """
        C{twistd tvlink sandbox --http ...} prints the curl command that
        makes a payment; making it (with twisted.web's client) is approved,
        and both status pages answer.
        """
        child = spawnTwistd(self, "sandbox", "--http", "tcp:0:interface=127.0.0.1", name="sandbox")
        match = yield child.waitFor(r"curl -s -X POST (http://127\.0\.0\.1:\d+/)v1/payments .* -d '(\{.*\})'", 20)
        url, body = match.group(1), json.loads(match.group(2))
        code, answer_ = yield fetch("POST", url + "v1/payments", body)
        self.assertEqual((code, answer_["state"]), (200, "approved"), answer_)
        code, status = yield fetch("GET", url + "status.json")
        self.assertEqual(status["links"][0]["state"], "ready")
        code, status = yield fetch("GET", url + "payment/status.json")
        self.assertEqual((status["role"], status["links"][0]["state"]), ("payment", "ready"))
        status = yield child.stop()
        self.assertEqual(status, 0, child.tail())


@defer.inlineCallbacks
def _connectRefused(port):
    """
    Whether a TCP connection to 127.0.0.1:C{port} is refused.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.protocol import Protocol

    endpoint = TCP4ClientEndpoint(getReactor(), "127.0.0.1", port, timeout=5)
    try:
        protocol = yield withDeadline(connectProtocol(endpoint, Protocol()), 5, "connect")
    except ConnectionRefusedError:
        return True
    protocol.transport.abortConnection()
    return False
