"""
Tests for L{tvlink.payment.ledger} (the SQLite ledger, its writer thread and group
commit) with its rules (L{tvlink.payment.rules}, L{tvlink.payment.accounts})
and store (L{tvlink.store.ledgersql}), L{tvlink.payment.backend} (the payment
side's back-end hop) and the ledger options of C{twistd tvlink payment}.

The ledger's writer is a real thread that delivers with
C{reactor.callFromThread}, so those tests run on the real reactor and
return Deferreds; nothing sleeps. The handler's timeout is driven by a
Clock.
"""

import os
import signal
import sqlite3
import sys
import threading

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.usage import UsageError
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.ledgerkit import (
    OTHER,
    PAN,
    WHEN,
    RealReactorTestCase,
    balanceInquiry,
    getReactor,
    message,
    purchase,
    refund,
    reversal,
    statusInquiry,
)
from tvlink import PaymentService
from tvlink.cli.tap import Options, makeService
from tvlink.link.interfaces import IMessageHandler
from tvlink.masking import maskCard as maskPan
from tvlink.payment.accounts import checkBalance
from tvlink.payment.backend import IAbandonableBackend, IAccountBackend, LedgerHandler
from tvlink.payment.errors import (
    BadAmount,
    BadCardNumber,
    DuplicateAccount,
    LedgerClosed,
    StillApplying,
    UnknownAccount,
)
from tvlink.payment.ledger import PaymentLedger
from tvlink.payment.rules import Outcome
from tvlink.payment.service import DemoHandler, LedgerPaymentService, parseLedgerSpec
from tvlink.payment.writer import Work


class HelperTests(unittest.SynchronousTestCase):
    def test_maskPan(self):
        self.assertEqual(maskPan(PAN), "622202*********0018")
        self.assertEqual(maskPan("622202123456"), "622202**3456")
        self.assertEqual(maskPan("12345678"), "****5678")
        self.assertEqual(maskPan("123"), "***")
        self.assertEqual(maskPan(None), "-")

    def test_parseLedgerSpec(self):
        self.assertEqual(parseLedgerSpec("memory"), ("memory", None))
        self.assertEqual(parseLedgerSpec("sqlite:/var/tvlink/ledger.db"), ("sqlite", "/var/tvlink/ledger.db"))
        for bad in ("sqlite:", "ledger.db", "postgres:x", ""):
            self.assertRaises(ValueError, parseLedgerSpec, bad)

    def test_checkBalance(self):
        self.assertEqual(checkBalance("100000"), 100000)
        self.assertEqual(checkBalance(0), 0)
        for bad in ("12.5", "-1", "1e3", "", 1.5, True, "1000000000000"):
            self.assertRaises(BadAmount, checkBalance, bad)

    def test_ledgerProvidesInterfaces(self):
        ledger = PaymentLedger("unused.db", reactor=Clock())
        verifyObject(IAccountBackend, ledger)
        verifyObject(IAbandonableBackend, ledger)
        verifyObject(IMessageHandler, LedgerHandler(ledger, reactor=Clock()))
        self.assertFalse(os.path.exists("unused.db"), "the ledger opened its file before open()")


class RulesTests(RealReactorTestCase):
    """
    The transaction rules of WIRE.md, one request type at a time.
    """

    @inlineCallbacks
    def test_purchaseDebits(self):
        ledger = yield self.newLedger()
        answer = yield ledger.apply(purchase("000001", 1234))
        self.assertEqual(answer, {"resp": "00"})
        answer = yield ledger.apply(balanceInquiry("000002"))
        self.assertEqual(answer, {"resp": "00", "balance": "000000008766"})
        account = yield ledger.account(PAN)
        self.assertEqual((account["balance"], account["opening"], account["status"]), (8766, 10000, "active"))

    @inlineCallbacks
    def test_insufficientFunds(self):
        ledger = yield self.newLedger()
        answer = yield ledger.apply(purchase("000001", 10001))
        self.assertEqual(answer["resp"], "51")
        answer = yield ledger.apply(purchase("000002", 10000))
        self.assertEqual(answer["resp"], "00")
        self.assertEqual((yield ledger.account(PAN))["balance"], 0)

    @inlineCallbacks
    def test_unknownAndFrozenCards(self):
        ledger = yield self.newLedger()
        answer = yield ledger.apply(purchase("000001", 100, pan=OTHER))
        self.assertEqual(answer["resp"], "14")
        answer = yield ledger.apply(balanceInquiry("000002", pan=OTHER))
        self.assertEqual(answer["resp"], "14")
        before = yield ledger.freeze(PAN)
        self.assertEqual(before, "active")
        answer = yield ledger.apply(purchase("000003", 100))
        self.assertEqual(answer["resp"], "14")
        answer = yield ledger.apply(balanceInquiry("000004"))
        self.assertEqual(answer, {"resp": "00", "balance": "000000010000"})
        yield ledger.unfreeze(PAN)
        answer = yield ledger.apply(purchase("000005", 100))
        self.assertEqual(answer["resp"], "00")
        yield self.assertFailure(ledger.freeze(OTHER), UnknownAccount)

    @inlineCallbacks
    def test_badAmountsAndFormat(self):
        ledger = yield self.newLedger()
        cases = [
            (dict(purchase("000001", 0)), "13"),
            (dict(purchase("000002", 1), amount="123"), "13"),
            (dict(purchase("000003", 1), amount="00000000001x"), "13"),
            (dict(purchase("000004", 1), amount="-00000000001"), "13"),
            (dict(purchase("000005", 1), currency="840"), "13"),
            ({k: v for k, v in purchase("000006", 1).items() if k != "amount"}, "30"),
            ({k: v for k, v in purchase("000007", 1).items() if k != "pan"}, "30"),
            (dict(purchase("000008", 1), amount=100), "30"),
            (dict(balanceInquiry("000009"), pan=""), "30"),
        ]
        for request, resp in cases:
            answer = yield ledger.apply(request)
            self.assertEqual(answer["resp"], resp, request)
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)

    @inlineCallbacks
    def test_otherMessages(self):
        ledger = yield self.newLedger()
        self.assertEqual((yield ledger.apply(message("0820", None, "000001"))), {"resp": "00"})
        self.assertEqual((yield ledger.apply(message("0100", "000000", "000002")))["resp"], "12")
        self.assertEqual((yield ledger.apply(message("0200", "310000", "000003", pan=PAN)))["resp"], "12")
        request = dict(purchase("000004", 100), mti="0220")
        self.assertEqual((yield ledger.apply(request))["resp"], "12")
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)

    @inlineCallbacks
    def test_refundLimits(self):
        """
        A refund credits the card, never more than the purchase less the
        refunds before it.
        """
        ledger = yield self.newLedger()
        buy = purchase("000001", 5000)
        self.assertEqual((yield ledger.apply(buy))["resp"], "00")
        self.assertEqual((yield ledger.apply(refund("000002", buy, 2000)))["resp"], "00")
        self.assertEqual((yield ledger.account(PAN))["balance"], 7000)
        self.assertEqual((yield ledger.apply(refund("000003", buy, 3001)))["resp"], "13")
        self.assertEqual((yield ledger.apply(refund("000004", buy, 3000)))["resp"], "00")
        self.assertEqual((yield ledger.apply(refund("000005", buy, 1)))["resp"], "13")
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        entry = yield ledger.entry(("PLATFORM", "000001", WHEN))
        self.assertEqual((entry["state"], entry["refunded"]), ("refunded", 5000))

    @inlineCallbacks
    def test_refundNeedsAnApprovedPurchase(self):
        ledger = yield self.newLedger(opening=((PAN, 10000), (OTHER, 10000)))
        ghost = purchase("000099", 100)
        self.assertEqual((yield ledger.apply(refund("000001", ghost, 100)))["resp"], "25")
        declined = purchase("000002", 99999)
        self.assertEqual((yield ledger.apply(declined))["resp"], "51")
        self.assertEqual((yield ledger.apply(refund("000003", declined, 100)))["resp"], "12")
        inquiry = balanceInquiry("000004")
        yield ledger.apply(inquiry)
        self.assertEqual((yield ledger.apply(refund("000005", inquiry, 100)))["resp"], "25")
        buy = purchase("000006", 500)
        yield ledger.apply(buy)
        self.assertEqual((yield ledger.apply(refund("000007", buy, 100, pan=OTHER)))["resp"], "12")
        noOrig = refund("000008", buy, 100)
        del noOrig["orig"]
        self.assertEqual((yield ledger.apply(noOrig))["resp"], "30")
        self.assertEqual((yield ledger.account(PAN))["balance"], 9500)
        self.assertEqual((yield ledger.account(OTHER))["balance"], 10000)

    @inlineCallbacks
    def test_statusInquiry(self):
        ledger = yield self.newLedger()
        approved = purchase("000001", 100)
        declined = purchase("000002", 99999)
        reversedOne = purchase("000003", 100)
        refunded = purchase("000004", 100)
        never = purchase("000005", 100)
        for request in (approved, declined, reversedOne, refunded):
            yield ledger.apply(request)
        yield ledger.apply(reversal("000006", reversedOne))
        yield ledger.apply(refund("000007", refunded, 40))
        expected = [
            (approved, "approved"),
            (declined, "declined"),
            (reversedOne, "reversed"),
            (refunded, "refunded"),
            (never, "unknown"),
        ]
        for i, (original, state) in enumerate(expected):
            answer = yield ledger.apply(statusInquiry("%06d" % (100 + i,), original))
            self.assertEqual(answer, {"resp": "00", "state": state}, original["stan"])
        bad = statusInquiry("000200", approved)
        bad["orig"] = "000001"
        self.assertEqual((yield ledger.apply(bad))["resp"], "30")

    @inlineCallbacks
    def test_reversalOfPurchaseMovesMoneyOnce(self):
        ledger = yield self.newLedger()
        buy = purchase("000001", 2500)
        yield ledger.apply(buy)
        first = reversal("000002", buy)
        self.assertEqual((yield ledger.apply(first)), {"resp": "00"})
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        # The same reversal again, and another reversal of the same
        # purchase: acknowledged, no money moves.
        self.assertEqual((yield ledger.apply(first)), {"resp": "00"})
        self.assertEqual((yield ledger.apply(reversal("000003", buy))), {"resp": "00"})
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        # A refund of a reversed purchase is refused.
        self.assertEqual((yield ledger.apply(refund("000004", buy, 100)))["resp"], "12")

    @inlineCallbacks
    def test_reversalOvertakesOriginal(self):
        """
        A reversal of something never applied is acknowledged without
        moving money; the original arriving afterwards is declined, not
        applied, and its status is reversed.
        """
        ledger = yield self.newLedger()
        lines = self.captureLog()
        late = purchase("000001", 2500)
        self.assertEqual((yield ledger.apply(reversal("000002", late))), {"resp": "00"})
        self.assertEqual((yield ledger.apply(statusInquiry("000003", late)))["state"], "reversed")
        self.assertEqual((yield ledger.apply(late)), {"resp": "12"})
        self.assertEqual((yield ledger.apply(late)), {"resp": "12"})
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        self.assertEqual((yield ledger.apply(statusInquiry("000004", late)))["state"], "reversed")
        entry = yield ledger.entry(("PLATFORM", "000001", WHEN))
        self.assertEqual((entry["resp"], entry["state"], entry["amount"]), ("12", "reversed", 2500))
        self.assertTrue(any("never seen" in line for line in lines), lines)
        # A refund overtaken by its reversal likewise.
        buy = purchase("000005", 1000)
        yield ledger.apply(buy)
        lateRefund = refund("000006", buy, 1000)
        yield ledger.apply(reversal("000007", lateRefund))
        self.assertEqual((yield ledger.apply(lateRefund))["resp"], "12")
        self.assertEqual((yield ledger.account(PAN))["balance"], 9000)

    @inlineCallbacks
    def test_reversalOfRefund(self):
        ledger = yield self.newLedger()
        buy = purchase("000001", 4000)
        back = refund("000002", buy, 1500)
        yield ledger.apply(buy)
        yield ledger.apply(back)
        self.assertEqual((yield ledger.account(PAN))["balance"], 7500)
        self.assertEqual((yield ledger.apply(reversal("000003", back))), {"resp": "00"})
        self.assertEqual((yield ledger.account(PAN))["balance"], 6000)
        entry = yield ledger.entry(("PLATFORM", "000001", WHEN))
        self.assertEqual((entry["state"], entry["refunded"]), ("approved", 0))
        # The whole purchase can be refunded again.
        self.assertEqual((yield ledger.apply(refund("000004", buy, 4000)))["resp"], "00")
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)

    @inlineCallbacks
    def test_reversalOfPartlyRefundedPurchase(self):
        """
        Reversing a purchase voids its refunds with it: the card gets back
        what was still debited, and the books reconcile.
        """
        ledger = yield self.newLedger()
        buy = purchase("000001", 5000)
        yield ledger.apply(buy)
        yield ledger.apply(refund("000002", buy, 2000))
        yield ledger.apply(reversal("000003", buy))
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        self.assertEqual((yield ledger.entry(("PLATFORM", "000002", WHEN)))["state"], "reversed")
        report = yield ledger.reconcile()
        self.assertEqual(report["mismatches"], [])

    @inlineCallbacks
    def test_reversingARefundMayOverdraw(self):
        """
        A reversal is a forced posting: taking back a refund already spent
        leaves the card below zero (shown as zero on the wire).
        """
        ledger = yield self.newLedger(opening=((PAN, 1000),))
        buy = purchase("000001", 1000)
        back = refund("000002", buy, 1000)
        for request in (buy, back, purchase("000003", 1000)):
            self.assertEqual((yield ledger.apply(request))["resp"], "00")
        self.assertEqual((yield ledger.apply(reversal("000004", back)))["resp"], "00")
        self.assertEqual((yield ledger.account(PAN))["balance"], -1000)
        self.assertEqual((yield ledger.apply(balanceInquiry("000005")))["balance"], "000000000000")
        self.assertEqual((yield ledger.apply(purchase("000006", 1)))["resp"], "51")
        self.assertEqual((yield ledger.reconcile())["mismatches"], [])

    @inlineCallbacks
    def test_repeatGetsTheFirstAnswer(self):
        ledger = yield self.newLedger()
        buy = purchase("000001", 3000)
        self.assertEqual((yield ledger.apply(buy)), {"resp": "00"})
        self.assertEqual((yield ledger.apply(buy)), {"resp": "00"})
        self.assertEqual((yield ledger.account(PAN))["balance"], 7000)
        inquiry = balanceInquiry("000002")
        self.assertEqual((yield ledger.apply(inquiry))["balance"], "000000007000")
        yield ledger.apply(purchase("000003", 1000))
        self.assertEqual((yield ledger.apply(inquiry))["balance"], "000000007000")
        tooMuch = purchase("000004", 9000)
        self.assertEqual((yield ledger.apply(tooMuch))["resp"], "51")
        yield ledger.apply(refund("000005", buy, 3000))
        self.assertEqual((yield ledger.apply(tooMuch))["resp"], "51")
        # The same key with other content is a duplicate transmission.
        self.assertEqual((yield ledger.apply(purchase("000001", 1)))["resp"], "94")
        self.assertEqual((yield ledger.account(PAN))["balance"], 9000)

    @inlineCallbacks
    def test_duplicateInOneBatch(self):
        ledger = yield self.newLedger()
        buy = purchase("000001", 100)
        answers = yield defer.gatherResults([ledger.apply(buy) for _ in range(5)])
        self.assertEqual(answers, [{"resp": "00"}] * 5)
        self.assertEqual((yield ledger.account(PAN))["balance"], 9900)

    @inlineCallbacks
    def test_amountsAreIntegers(self):
        ledger = yield self.newLedger()
        yield ledger.apply(purchase("000001", 1))
        conn = sqlite3.connect(ledger.path)
        self.addCleanup(conn.close)
        kinds = conn.execute(
            "SELECT typeof(balance), typeof(opening) FROM accounts"
            " UNION ALL SELECT typeof(amount), typeof(refunded) FROM journal"
        ).fetchall()
        self.assertEqual(set(kinds), {("integer", "integer")})

    @inlineCallbacks
    def test_accounts(self):
        ledger = yield self.newLedger()
        yield self.assertFailure(ledger.openAccount(PAN, 1), DuplicateAccount)
        yield self.assertFailure(ledger.openAccount("12", 1), BadCardNumber)
        yield self.assertFailure(ledger.openAccount(OTHER, "1.5"), BadAmount)
        yield ledger.openAccount(OTHER, 0)
        self.assertEqual([a["pan"] for a in (yield ledger.accounts())], [PAN, OTHER])
        yield self.assertFailure(ledger.account("6222020000000000999"), UnknownAccount)

    @inlineCallbacks
    def test_noUnmaskedCardInTheLog(self):
        ledger = yield self.newLedger()
        lines = self.captureLog()
        for request in (
            purchase("000001", 99999),
            purchase("000002", 100, pan=OTHER),
            reversal("000003", purchase("000004", 1)),
        ):
            yield ledger.apply(request)
        yield self.assertFailure(ledger.openAccount(PAN, 1), DuplicateAccount)
        text = "\n".join(lines)
        self.assertIn("622202*********0018", text)
        self.assertNotIn(PAN, text)
        self.assertNotIn(OTHER, text)


class WriterTests(RealReactorTestCase):
    """
    The writer thread: group commit, durability, failures, cancellation,
    closing.
    """

    @inlineCallbacks
    def test_groupCommitBatches(self):
        """
        A hundred purchases submitted at once from the reactor thread take
        far fewer than a hundred commits.
        """
        ledger = yield self.newLedger(opening=((PAN, 100000),))
        before = ledger.stats()
        answers = yield defer.gatherResults(
            [ledger.apply(purchase("%06d" % (i,), 100)) for i in range(1, 101)]
        )
        self.assertEqual([a["resp"] for a in answers], ["00"] * 100)
        stats = ledger.stats()
        commits = stats["commits"] - before["commits"]
        self.assertEqual(stats["requests"] - before["requests"], 100)
        self.assertLessEqual(commits, 10, stats)
        self.assertGreater(stats["largestBatch"], 10, stats)
        self.assertEqual((yield ledger.account(PAN))["balance"], 90000)

    @inlineCallbacks
    def test_oneCommitEachWithoutGroupCommit(self):
        ledger = yield self.newLedger(opening=((PAN, 100000),), group_commit=False)
        before = ledger.stats()["commits"]
        yield defer.gatherResults([ledger.apply(purchase("%06d" % (i,), 100)) for i in range(1, 31)])
        stats = ledger.stats()
        self.assertEqual(stats["commits"] - before, 30)
        self.assertEqual(stats["largestBatch"], 1)

    @inlineCallbacks
    def test_answerOnlyOnceDurable(self):
        """
        When an answer arrives, another connection (another process, for
        all SQLite knows) already sees its journal entry and the new
        balance; and so does the ledger reopened after close.
        """
        ledger = yield self.newLedger()
        seen = []

        def look(answer):
            conn = sqlite3.connect(ledger.path)
            try:
                seen.append(
                    conn.execute(
                        "SELECT resp, state FROM journal WHERE stan = '000001'"
                    ).fetchall()
                )
                seen.append(conn.execute("SELECT balance FROM accounts").fetchall())
                seen.append(conn.execute("PRAGMA journal_mode").fetchone())
            finally:
                conn.close()
            return answer

        d = ledger.apply(purchase("000001", 700))
        d.addCallback(look)
        yield d
        self.assertEqual(seen, [[("00", "approved")], [(9300,)], ("wal",)])
        yield ledger.close()
        again = PaymentLedger(ledger.path)
        self.addCleanup(again.close)
        self.assertEqual((yield again.account(PAN))["balance"], 9300)
        self.assertEqual((yield again.apply(purchase("000001", 700))), {"resp": "00"})
        self.assertEqual((yield again.account(PAN))["balance"], 9300)

    @inlineCallbacks
    def test_synchronousFull(self):
        ledger = yield self.newLedger()
        level = yield ledger._submit(lambda store, now, work: store.conn.execute("PRAGMA synchronous").fetchone()[0])
        self.assertEqual(level, 2)  # FULL

    @inlineCallbacks
    def test_failingWorkIsRolledBackAlone(self):
        ledger = yield self.newLedger()

        def broken(store, now, work):
            store.conn.execute("UPDATE accounts SET balance = 0")
            raise RuntimeError("broken work")

        blocker = threading.Event()
        first = ledger._submit(lambda store, now, work: blocker.wait(10))
        ok = ledger.apply(purchase("000001", 100))
        bad = ledger._submit(broken)
        ok2 = ledger.apply(purchase("000002", 100))
        blocker.set()
        yield first
        self.assertEqual((yield ok), {"resp": "00"})
        yield self.assertFailure(bad, RuntimeError)
        self.assertEqual((yield ok2), {"resp": "00"})
        self.assertEqual((yield ledger.account(PAN))["balance"], 9800)

    @inlineCallbacks
    def test_writerSurvivesSystemExit(self):
        ledger = yield self.newLedger()

        def exits(store, now, work):
            raise SystemExit(3)

        yield self.assertFailure(ledger._submit(exits), SystemExit)
        self.assertEqual((yield ledger.apply(purchase("000001", 100))), {"resp": "00"})
        self.assertEqual((yield ledger.stateOf(("PLATFORM", "000001", WHEN))), "approved")
        self.assertEqual((yield ledger.stateOf(("PLATFORM", "000002", WHEN))), "unknown")

    @inlineCallbacks
    def test_closeDrains(self):
        ledger = yield self.newLedger()
        pending = [ledger.apply(purchase("%06d" % (i,), 10)) for i in range(1, 51)]
        closed = ledger.close()
        self.assertEqual(ledger.state, "closing")
        yield self.assertFailure(ledger.apply(purchase("000099", 10)), LedgerClosed)
        yield closed
        self.assertEqual(ledger.state, "closed")
        self.assertTrue(all(d.called for d in pending))
        answers = yield defer.gatherResults(pending)
        self.assertEqual(answers, [{"resp": "00"}] * 50)
        conn = sqlite3.connect(ledger.path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0], 50)
        self.assertEqual(conn.execute("SELECT balance FROM accounts").fetchone()[0], 9500)
        # Closing again, and closing one never opened, are no-ops.
        yield ledger.close()
        yield PaymentLedger(self.mktemp()).close()

    @inlineCallbacks
    def test_cancelledBeforeApplied(self):
        """
        A purchase whose caller gave up (and answered 91) before the writer
        reached it is journalled as 91 and moves no money.
        """
        ledger = yield self.newLedger()
        blocker = threading.Event()
        busy = ledger._submit(lambda store, now, work: blocker.wait(10))
        buy = purchase("000001", 100)
        d = ledger.apply(buy)
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        blocker.set()
        yield busy
        self.assertEqual((yield ledger.apply(buy)), {"resp": "91"})
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        self.assertEqual((yield ledger.entry(("PLATFORM", "000001", WHEN)))["state"], "declined")
        # Inquiries and reversals are applied all the same.
        reverse = reversal("000002", purchase("000003", 1))
        blocker.clear()
        busy = ledger._submit(lambda store, now, work: blocker.wait(10))
        d = ledger.apply(reverse)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        blocker.set()
        yield busy
        self.assertEqual((yield ledger.apply(reverse)), {"resp": "00"})

    @inlineCallbacks
    def test_cancelledWhileBeingApplied(self):
        """
        Cancelling a purchase the writer is already applying cannot stop
        it: the Deferred fails with StillApplying (not CancelledError, from
        which a caller would answer 91), the purchase is committed as it
        is, and nothing is voided afterwards.
        """
        ledger = yield self.newLedger()
        reached, release = self.holdWriter(ledger)
        buy = purchase("000001", 100)
        d = ledger.apply(buy)
        yield reached  # the purchase is applied, its commit not yet done
        d.cancel()
        self.failureResultOf(d, StillApplying)
        release()
        entry = yield ledger.entry(("PLATFORM", "000001", WHEN))
        self.assertEqual((entry["resp"], entry["state"]), ("00", "approved"))
        self.assertEqual((yield ledger.account(PAN))["balance"], 9900)
        self.assertEqual((yield ledger.apply(buy)), {"resp": "00"})
        self.assertEqual((ledger.stats()["voids"], ledger.stats()["abandonedLate"]), (0, 1))
        self.assertEqual((yield ledger.reconcile())["mismatches"], [])

    def test_cancelledAfterCommit(self):
        """
        Once committed, cancelling is too late: the Deferred fires with the
        real answer at once.
        """
        ledger = PaymentLedger("unused.db", reactor=Clock())
        work = Work(None)
        work.deferred = Deferred(lambda d: ledger._cancel(work))
        work.done = True
        work.result = Outcome({"resp": "00"})
        work.deferred.cancel()
        self.assertEqual(self.successResultOf(work.deferred), {"resp": "00"})

    @inlineCallbacks
    def test_adminWritesWhileOpen(self):
        """
        Another connection (the admin command) can write while the ledger
        is open, and the ledger sees it.
        """
        ledger = yield self.newLedger()
        yield ledger.apply(purchase("000001", 100))
        conn = sqlite3.connect(ledger.path, timeout=5)
        self.addCleanup(conn.close)
        with conn:
            conn.execute(
                "INSERT INTO accounts (pan, balance, opening, status, opened_at) VALUES (?, 5, 5, 'active', 'x')",
                (OTHER,),
            )
        self.assertEqual((yield ledger.apply(purchase("000002", 5, pan=OTHER))), {"resp": "00"})

    def test_openErrors(self):
        ledger = PaymentLedger(os.path.join(self.mktemp(), "missing-dir", "l.db"))
        from tvlink.payment.errors import LedgerError, NotALedger

        self.assertRaises(LedgerError, ledger.open)
        self.failureResultOf(ledger.apply(purchase("000001", 1)), LedgerError)
        junk = self.mktemp()
        with open(junk, "wb") as f:
            f.write(b"this is not a database" * 100)
        self.assertRaises(NotALedger, PaymentLedger(junk).open)


_CRASH_CHILD = r"""
import os, signal, sys, threading
from twisted.internet import reactor
from twisted.internet.task import Clock
from tvlink.payment.backend import LedgerHandler
from tvlink.payment.ledger import PaymentLedger

path, pan = sys.argv[1], sys.argv[2]
ledger = PaymentLedger(path, reactor=reactor)
clock = Clock()
handler = LedgerHandler(ledger, backend_timeout=30, reactor=clock)
held = threading.Event()
pending = []

def timeout():
    # On the reactor, while the writer holds the applied purchase: the
    # handler's back-end timeout runs out now.
    clock.advance(30)
    print("timed out; answered: %s" % (pending[0].called,), flush=True)
    held.set()

def beforeCommit(batch):
    reactor.callFromThread(timeout)
    held.wait(10)

def afterCommit(batch):
    print("committed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

def start(account):
    ledger._beforeCommit = beforeCommit
    ledger._afterCommit = afterCommit
    d = handler.handle({"mti": "0200", "proc": "000000", "sender": "PLATFORM", "stan": "000001",
                        "time": "1125120000", "pan": pan, "amount": "%012d" % 2500, "currency": "156"})
    pending.append(d)
    d.addCallback(lambda answer: print("answer sent:", answer["resp"], flush=True))

reactor.callWhenRunning(lambda: ledger.openAccount(pan, 10000).addCallback(start))
reactor.callLater(20, reactor.stop)
reactor.run()
"""


class AbandonTests(RealReactorTestCase):
    """
    The back-end timeout of L{LedgerHandler} in front of a real ledger:
    the handler asks the ledger to abandon the request, and answers 91
    only once the ledger has durably recorded it as not applied; a request
    already being applied is answered, late, with its real answer.
    """

    def handlerFor(self, ledger):
        clock = Clock()
        return LedgerHandler(ledger, backend_timeout=30, reactor=clock), clock

    def onDisk(self, ledger, stan):
        """
        What another connection sees now of the entry C{stan} and the
        balance of C{PAN}.
        """
        conn = sqlite3.connect(ledger.path)
        try:
            entry = conn.execute("SELECT resp, state FROM journal WHERE stan = ?", (stan,)).fetchall()
            balance = conn.execute("SELECT balance FROM accounts WHERE pan = ?", (PAN,)).fetchone()[0]
        finally:
            conn.close()
        return entry, balance

    @inlineCallbacks
    def test_abandonedBeforeStarted(self):
        """
        A purchase the writer has not started when the timeout runs out is
        journalled as not applied, and only then answered 91; the balance
        does not move, and a repeat of its key is answered 91 too.
        """
        ledger = yield self.newLedger()
        handler, clock = self.handlerFor(ledger)
        busy, release = self.blockWriter(ledger)
        buy = purchase("000001", 100)
        d = handler.handle(buy)
        clock.advance(30)
        # Not durable yet, so not answered yet.
        self.assertNoResult(d)
        seen = []
        d.addCallback(lambda answer: (seen.append(self.onDisk(ledger, "000001")), answer)[1])
        release()
        self.assertEqual((yield d), {"resp": "91"})
        self.assertEqual(seen, [([("91", "declined")], 10000)])
        yield busy
        self.assertEqual(handler.counters["timedOut"], 1)
        self.assertEqual(handler.counters["late"], 0)
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        entry = yield ledger.entry(("PLATFORM", "000001", WHEN))
        self.assertEqual((entry["resp"], entry["state"]), ("91", "declined"))
        self.assertEqual((yield handler.handle(buy)), {"resp": "91"})
        self.assertEqual((yield ledger.apply(buy)), {"resp": "91"})
        self.assertEqual((yield ledger.stateOf(("PLATFORM", "000001", WHEN))), "declined")
        self.assertEqual(ledger.stats()["voids"], 1)
        self.assertEqual((yield ledger.reconcile())["mismatches"], [])

    @inlineCallbacks
    def test_abandonedReversalIsAppliedAndAnsweredTruly(self):
        """
        Abandoning only keeps money from moving: a reversal the writer had
        not started is applied all the same, and answered 00, not 91.
        """
        ledger = yield self.newLedger()
        buy = purchase("000001", 700)
        self.assertEqual((yield ledger.apply(buy)), {"resp": "00"})
        handler, clock = self.handlerFor(ledger)
        busy, release = self.blockWriter(ledger)
        d = handler.handle(reversal("000002", buy))
        clock.advance(30)
        self.assertNoResult(d)
        release()
        self.assertEqual((yield d), {"resp": "00"})
        yield busy
        self.assertEqual((handler.counters["late"], handler.counters["timedOut"]), (1, 0))
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        self.assertEqual((yield ledger.reconcile())["mismatches"], [])

    @inlineCallbacks
    def test_abandonedWhileBeingApplied(self):
        """
        A purchase the writer is applying when the timeout runs out is not
        answered 91: it is committed, and answered with its real 00 once
        that is durable, however long the writer takes. Nothing is voided.
        """
        ledger = yield self.newLedger()
        lines = self.captureLog()
        handler, clock = self.handlerFor(ledger)
        reached, release = self.holdWriter(ledger)
        buy = purchase("000001", 100)
        d = handler.handle(buy)
        yield reached  # applied, its commit not yet done
        clock.advance(30)
        self.assertNoResult(d)
        # A writer stuck for far longer still gets no 91 sent for it.
        clock.advance(3600)
        self.assertNoResult(d)
        self.assertEqual(clock.getDelayedCalls(), [])
        seen = []
        d.addCallback(lambda answer: (seen.append(self.onDisk(ledger, "000001")), answer)[1])
        release()
        self.assertEqual((yield d), {"resp": "00"})
        self.assertEqual(seen, [([("00", "approved")], 9900)])
        self.assertEqual(handler.counters, {"forwarded": 1, "answered": 1, "late": 1, "timedOut": 0, "failed": 0})
        entry = yield ledger.entry(("PLATFORM", "000001", WHEN))
        self.assertEqual((entry["resp"], entry["state"]), ("00", "approved"))
        self.assertEqual((yield ledger.account(PAN))["balance"], 9900)
        self.assertEqual((yield ledger.apply(buy)), {"resp": "00"})
        stats = ledger.stats()
        self.assertEqual((stats["voids"], stats["abandonedLate"]), (0, 1))
        self.assertEqual((yield ledger.reconcile())["mismatches"], [])
        text = "\n".join(lines)
        self.assertIn("asked it to abandon", text)
        self.assertIn("after the 30.0s timeout", text)
        self.assertNotIn("answering 91", text)
        self.assertNotIn("void", text)

    @inlineCallbacks
    def test_abandonWhatIsNotPending(self):
        """
        Abandoning a Deferred that is not the ledger's, or is answered
        already, does nothing.
        """
        ledger = yield self.newLedger()
        self.assertIsNone(ledger.abandon(Deferred()))
        d = ledger.apply(purchase("000001", 100))
        self.assertEqual((yield d), {"resp": "00"})
        self.assertIsNone(ledger.abandon(d))
        self.assertEqual(ledger._works, {})

    @inlineCallbacks
    def test_crashBetweenCommitAndAnswer(self):
        """
        The process dies after the batch holding a purchase abandoned
        mid-apply was committed, before its answer went out: no 91 was
        sent for it, the reopened ledger is consistent, and it tells the
        platform the truth (a repeat gets 00; its reversal gives the money
        back).
        """
        from tests.processes import ROOT, TwistdProcess

        path = os.path.abspath(self.mktemp() + ".db")
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        child = TwistdProcess("ledger-crash")
        getReactor().spawnProcess(
            child, sys.executable, [sys.executable, "-c", _CRASH_CHILD, path, PAN], env=env, path=ROOT
        )
        self.addCleanup(child.stop)
        status = yield child.whenEnded(15)
        self.assertEqual(status, -signal.SIGKILL, child.tail())
        self.assertEqual(child.stdout, ["timed out; answered: False", "committed"], child.tail())
        ledger = PaymentLedger(path)
        self.addCleanup(ledger.close)
        report = yield ledger.reconcile()
        self.assertEqual(report["mismatches"], [])
        self.assertEqual((yield ledger.account(PAN))["balance"], 7500)
        entry = yield ledger.entry(("PLATFORM", "000001", WHEN))
        self.assertEqual((entry["resp"], entry["state"]), ("00", "approved"))
        buy = purchase("000001", 2500)
        self.assertEqual((yield ledger.apply(buy)), {"resp": "00"})
        # The platform, never answered, reverses.
        self.assertEqual((yield ledger.apply(reversal("000002", buy))), {"resp": "00"})
        self.assertEqual((yield ledger.account(PAN))["balance"], 10000)
        self.assertEqual((yield ledger.reconcile())["mismatches"], [])


class SlowBackend:
    """
    A back end that answers when told; records cancellations.
    """

    def __init__(self):
        self.pending = []
        self.cancelled = []

    def apply(self, message):
        d = Deferred(lambda d: self.cancelled.append(message))
        self.pending.append(d)
        return d


implementer(IAccountBackend)(SlowBackend)


class HandlerTests(unittest.SynchronousTestCase):
    """
    L{LedgerHandler}: the back-end hop and its timeout, on a Clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.backend = SlowBackend()
        self.handler = LedgerHandler(None, self.backend, backend_timeout=30, reactor=self.clock)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_answer(self):
        d = self.handler.handle(purchase("000001", 1))
        self.clock.advance(29)
        self.backend.pending[0].callback({"resp": "00"})
        self.assertEqual(self.successResultOf(d), {"resp": "00"})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.handler.counters["answered"], 1)

    def test_timeoutAnswers91(self):
        d = self.handler.handle(purchase("000001", 1))
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), {"resp": "91"})
        self.assertEqual(len(self.backend.cancelled), 1)
        self.assertEqual(self.handler.counters["timedOut"], 1)
        texts = [formatEvent(e) for e in self.events]
        self.assertTrue(any("within 30" in t and "answering 91" in t for t in texts), texts)

    def test_timeoutIsConfigurable(self):
        handler = LedgerHandler(None, self.backend, backend_timeout=2.5, reactor=self.clock)
        d = handler.handle(purchase("000001", 1))
        self.clock.advance(2.5)
        self.assertEqual(self.successResultOf(d), {"resp": "91"})
        self.assertRaises(ValueError, LedgerHandler, None, self.backend, backend_timeout=0)
        self.assertRaises(ValueError, LedgerHandler, None, None)

    def test_tooLateToCancel(self):
        """
        A back end whose canceller fires with the real answer (it could no
        longer stop the request) has that answer passed on, not 91.
        """

        class Committed:
            def apply(self, message):
                return Deferred(lambda d: d.callback({"resp": "00"}))

        handler = LedgerHandler(None, Committed(), reactor=self.clock)
        d = handler.handle(purchase("000001", 1))
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(d), {"resp": "00"})

    def test_failureAnswers96(self):
        d = self.handler.handle(purchase("000001", 1))
        self.backend.pending[0].errback(RuntimeError("issuer exploded"))
        self.assertEqual(self.successResultOf(d), {"resp": "96"})
        self.assertEqual(self.handler.counters["failed"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_raisingAndBadAnswersAnswer96(self):
        class Raising:
            def apply(self, message):
                raise RuntimeError("no")

        d = LedgerHandler(None, Raising(), reactor=self.clock).handle(purchase("000001", 1))
        self.assertEqual(self.successResultOf(d), {"resp": "96"})
        d = self.handler.handle(purchase("000002", 1))
        self.backend.pending[0].callback({"balance": "1"})
        self.assertEqual(self.successResultOf(d), {"resp": "96"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_abandonableBackendIsNotCancelled(self):
        """
        A back end that can abandon is asked to, not cancelled; the
        handler waits (with no further deadline) and passes on what it
        fires with: 91 as a timeout, anything else as a late answer.
        """

        @implementer(IAbandonableBackend)
        class Abandonable(SlowBackend):
            def __init__(self):
                SlowBackend.__init__(self)
                self.abandoned = []

            def abandon(self, d):
                self.abandoned.append(d)

        backend = Abandonable()
        handler = LedgerHandler(None, backend, backend_timeout=30, reactor=self.clock)
        first = handler.handle(purchase("000001", 1))
        second = handler.handle(purchase("000002", 1))
        self.clock.advance(30)
        self.assertEqual(backend.abandoned, backend.pending)
        self.assertEqual(backend.cancelled, [])
        self.clock.advance(10000)
        self.assertNoResult(first)
        self.assertNoResult(second)
        backend.pending[0].callback({"resp": "00"})
        backend.pending[1].callback({"resp": "91"})
        self.assertEqual(self.successResultOf(first), {"resp": "00"})
        self.assertEqual(self.successResultOf(second), {"resp": "91"})
        self.assertEqual(
            handler.counters, {"forwarded": 2, "answered": 1, "late": 1, "timedOut": 1, "failed": 0}
        )
        texts = [formatEvent(e) for e in self.events]
        self.assertTrue(any("asked it to abandon" in t for t in texts), texts)
        self.assertTrue(any("recorded it as not applied; answering 91" in t for t in texts), texts)

    def test_abandonFailingKeepsWaiting(self):
        """
        If asking to abandon fails, the handler does not guess: it keeps
        waiting for the back end's answer.
        """

        @implementer(IAbandonableBackend)
        class Broken(SlowBackend):
            def abandon(self, d):
                raise RuntimeError("cannot abandon")

        backend = Broken()
        d = LedgerHandler(None, backend, reactor=self.clock).handle(purchase("000001", 1))
        self.clock.advance(30)
        self.assertNoResult(d)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        backend.pending[0].callback({"resp": "51"})
        self.assertEqual(self.successResultOf(d), {"resp": "51"})

    def test_cancelInDoubtAnswers96(self):
        """
        A back end whose canceller fails with anything but CancelledError
        cannot say whether money moved: the handler answers 96, not 91.
        """

        class InDoubt:
            def apply(self, message):
                return Deferred(lambda d: d.errback(StillApplying("busy applying it")))

        d = LedgerHandler(None, InDoubt(), reactor=self.clock).handle(purchase("000001", 1))
        self.clock.advance(30)
        self.assertEqual(self.successResultOf(d), {"resp": "96"})
        self.assertEqual(len(self.flushLoggedErrors(StillApplying)), 1)

    def test_notificationAnsweredHere(self):
        d = self.handler.handle(message("0820", None, "000001"))
        self.assertEqual(self.successResultOf(d), {"resp": "00"})
        self.assertEqual(self.backend.pending, [])


class ServiceTests(RealReactorTestCase):
    """
    The ledger behind a real payment service, and the sandbox.
    """

    @inlineCallbacks
    def test_platformToLedger(self):
        from tvlink import PlatformService

        path = self.mktemp() + ".db"
        ledger = PaymentLedger(path)
        payment = LedgerPaymentService("tcp:0:interface=127.0.0.1", ledger, heartbeat=5)
        payment.startService()
        stopped = []
        self.addCleanup(lambda: stopped or payment.stopService())
        yield ledger.openAccount(PAN, 5000)
        port = yield payment.whenListening()
        platform = PlatformService(["127.0.0.1:%d" % (port.getHost().port,)], heartbeat=5)
        platform.startService()
        self.addCleanup(platform.stopService)
        yield platform.whenReady()
        lines = self.captureLog()
        answer = yield platform.request(
            {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "%012d" % 1234, "currency": "156"}
        )
        self.assertEqual((answer["mti"], answer["resp"]), ("0210", "00"))
        answer = yield platform.request({"mti": "0200", "proc": "300000", "pan": PAN})
        self.assertEqual(answer["balance"], "%012d" % (5000 - 1234,))
        answer = yield platform.request({"mti": "0200", "proc": "000000", "pan": PAN, "amount": "%012d" % 9999})
        self.assertEqual(answer["resp"], "51")
        self.assertNotIn(PAN, "\n".join(lines))
        yield platform.stopService()
        stopped.append(True)
        yield payment.stopService()
        self.assertEqual(ledger.state, "closed")

    @inlineCallbacks
    def test_sandbox(self):
        from tvlink.cli.sandbox import DEMO_ACCOUNTS, DEMO_PAN, SandboxService

        sandbox = SandboxService(heartbeat=5)
        sandbox.startService()
        running = [True]
        self.addCleanup(lambda: running and sandbox.stopService())
        path = sandbox.ledger.path
        self.assertTrue(os.path.exists(path))
        answer = yield sandbox.demo
        self.assertEqual(answer["resp"], "00")
        accounts = {a["pan"]: a for a in (yield sandbox.ledger.accounts())}
        self.assertEqual(sorted(accounts), sorted(pan for pan, _, _ in DEMO_ACCOUNTS))
        self.assertEqual(accounts[DEMO_PAN]["balance"], 100000 - 1234)
        self.assertEqual([a["status"] for a in accounts.values()].count("frozen"), 1)
        yield sandbox.stopService()
        running.clear()
        self.assertEqual(sandbox.ledger.state, "closed")
        self.assertFalse(os.path.exists(path))


class OptionsTests(unittest.SynchronousTestCase):
    """
    C{twistd tvlink payment --ledger ... --backend-timeout ...}.
    """

    def parse(self, *argv):
        config = Options()
        config.parseOptions(["payment", "--listen", "tcp:0"] + list(argv))
        return config

    def test_sqliteLedger(self):
        path = os.path.abspath(self.mktemp())
        service = makeService(
            self.parse("--ledger", "sqlite:" + path, "--backend-timeout", "12.5"), reactor=MemoryReactorClock()
        )
        self.assertIsInstance(service, LedgerPaymentService)
        self.assertIsInstance(service, PaymentService)
        self.assertEqual(service.ledger.path, path)
        self.assertEqual(service.handler.backend_timeout, 12.5)
        self.assertIs(service.handler.backend, service.ledger)
        self.assertFalse(os.path.exists(path), "building the service opened the ledger")

    def test_sqliteByDefault(self):
        service = makeService(self.parse(), reactor=MemoryReactorClock())
        self.assertIsInstance(service, LedgerPaymentService)
        self.assertTrue(service.ledger.path.endswith("tvlink-ledger.db"))

    def test_memoryOnRequest(self):
        service = makeService(self.parse("--ledger", "memory"), reactor=MemoryReactorClock())
        self.assertNotIsInstance(service, LedgerPaymentService)
        self.assertIsInstance(service.handler, DemoHandler)

    def test_badOptions(self):
        for argv, name in [
            (("--ledger", "postgres://x"), "--ledger"),
            (("--ledger", "sqlite:"), "--ledger"),
            (("--backend-timeout", "0"), "--backend-timeout"),
            (("--backend-timeout", "soon"), "--backend-timeout"),
        ]:
            e = self.assertRaises(UsageError, self.parse, *argv)
            self.assertIn(name, str(e), argv)
