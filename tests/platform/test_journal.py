"""
Tests for the platform's in-doubt journal and reversals, on a Clock with
the journal's SQLite work done synchronously.
"""

import glob
import os
import sqlite3

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import Events, PoolRig
from tvlink.errors import (
    DuplicateKey,
    InDoubt,
    InDoubtAnswer,
    InDoubtLinkLost,
    InDoubtTimeout,
    NoLinkAvailable,
    RequestTimeout,
)
from tvlink.payment.service import DemoHandler
from tvlink.platform.cardvault import CardVault
from tvlink.platform.journal import COLUMNS, PlatformJournal, isMoneyMoving
from tvlink.platform.service import PlatformService

PAN = "6222020000000000018"


def purchase(amount=100, **extra):
    m = {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "%012d" % amount, "currency": "156"}
    m.update(extra)
    return m


class SilentThenDemo(DemoHandler):
    """
    A demo ledger that can be told to hold its answers (a black hole that
    still applies what it receives, the worst case for money).
    """

    def __init__(self):
        DemoHandler.__init__(self)
        self.silent = False
        self.held = []

    def handle(self, message):
        answer = DemoHandler.handle(self, message)
        if self.silent:
            d = Deferred()
            self.held.append((d, answer))
            return d
        return answer


def diesInFlight(path, handler, **options):
    """
    A platform journalling to C{path} sends a purchase to C{handler}, which
    holds its answer, and dies with it in flight: no timeout, no reversal
    yet. The purchase's key.
    """
    first = PoolRig(ports=(7001,), handlers=[handler], journalPath=path, timeout=5, **options)
    handler.silent = True
    d = first.service.request(purchase(400))
    first.flush()
    d.addErrback(lambda f: None)
    key = list(first.service.factories[0].link.pending.entries)[0]
    first.service.journal.close()
    handler.silent = False
    return key


def timedOutThenAnswered(case, rig, handler, amount):
    """
    A purchase of C{amount} that C{handler} applies and answers only after
    it timed out (and its reversal went out): held answers are released,
    not yet delivered. The purchase's key.
    """
    handler.silent = True
    d = rig.service.request(purchase(amount))
    rig.flush()
    rig.advance(5)
    key = case.failureResultOf(d, InDoubt).value.key
    handler.silent = False
    for held, answer in handler.held:
        held.callback(answer)
    return key


class JournalTests(SynchronousTestCase):
    def rig(self, handler=None, **options):
        self.path = self.mktemp()
        self.handler = handler if handler is not None else SilentThenDemo()
        options.setdefault("timeout", 5)
        rig = PoolRig(ports=(7001,), handlers=[self.handler], journalPath=self.path, **options)
        self.addCleanup(lambda: rig.service.journal and rig.service.journal.close())
        return rig

    def outcome(self, rig, key):
        return self.successResultOf(rig.service.outcome(key))

    def test_money_moving(self):
        self.assertTrue(isMoneyMoving(purchase()))
        self.assertTrue(isMoneyMoving({"mti": "0220", "proc": "200000"}))
        self.assertFalse(isMoneyMoving({"mti": "0200", "proc": "300000"}))
        self.assertFalse(isMoneyMoving({"mti": "0420"}))

    def test_approved_and_declined_are_final(self):
        rig = self.rig()
        d = rig.service.request(purchase(100, order="A1"))
        rig.flush()
        answer = self.successResultOf(d)
        entry = self.outcome(rig, (answer["sender"], answer["stan"], answer["time"]))
        self.assertEqual((entry["state"], entry["resp"], entry["order_id"]), ("approved", "00", "A1"))
        self.assertEqual(entry["pan"], "622202*********0018")
        d = rig.service.request(purchase(10**9))
        rig.flush()
        answer = self.successResultOf(d)
        self.assertEqual(answer["resp"], "51")
        entry = self.outcome(rig, (answer["sender"], answer["stan"], answer["time"]))
        self.assertEqual(entry["state"], "declined")

    def test_timeout_in_doubt_then_reversed(self):
        rig = self.rig()
        events = Events(self)
        self.handler.silent = True
        d = rig.service.request(purchase(700))
        rig.flush()
        self.assertEqual(self.handler.spent[PAN], 700)  # applied, answer lost
        rig.advance(5)
        f = self.failureResultOf(d, InDoubtTimeout)
        self.assertIsInstance(f.value, RequestTimeout)
        self.assertIn("in doubt and is being reversed", str(f.value))
        key = f.value.key
        # The reversal went out at once; the payment side answers it (and,
        # late, the purchase).
        self.handler.silent = False
        for held, answer in self.handler.held:
            held.callback(answer)
        rig.flush()
        entry = self.outcome(rig, key)
        self.assertEqual(entry["state"], "reversed")
        self.assertEqual(entry["reversal_attempts"], 1)
        self.assertEqual(self.handler.spent[PAN], 0)
        self.assertEqual(len(events.named("in-doubt")), 1)
        self.assertEqual(len(events.named("reversed")), 1)
        self.assertEqual(rig.service.reversals.outstanding(), 0)
        self.assertEqual(rig.service.settings.stans.inFlight(), 0)

    def test_late_approval_recorded_and_reversed(self):
        rig = self.rig()
        self.handler.silent = True
        d = rig.service.request(purchase(300))
        rig.flush()
        rig.advance(5)
        key = self.failureResultOf(d, InDoubt).value.key
        # The held approval arrives late; the reversal (also held) is pending.
        late, answer = self.handler.held.pop(0)
        late.callback(answer)
        rig.flush()
        entry = self.outcome(rig, key)
        self.assertEqual((entry["state"], entry["late_resp"]), ("in-doubt", "00"))
        self.handler.silent = False
        for held, answer in self.handler.held:
            held.callback(answer)
        rig.flush()
        self.assertEqual(self.outcome(rig, key)["state"], "reversed")
        self.assertEqual(self.handler.spent[PAN], 0)

    def test_reversal_repeats_with_backoff_until_acknowledged(self):
        rig = self.rig(eject_after=10)
        self.handler.silent = True
        d = rig.service.request(purchase(50))
        rig.flush()
        rig.advance(5)
        key = self.failureResultOf(d, InDoubt).value.key
        # Reversal attempts time out (5 s each) and repeat after 1, 2, 4 s.
        for wait in (5, 1, 5, 2, 5, 4):
            rig.advance(wait)
        self.assertEqual(self.outcome(rig, key)["reversal_attempts"], 4)
        self.handler.silent = False
        rig.advance(5 + 8)
        entry = self.outcome(rig, key)
        self.assertEqual(entry["state"], "reversed")
        # Every attempt used one key: the payment side applied the reversal once.
        self.assertEqual(self.handler.spent[PAN], 0)

    def test_link_lost_in_doubt_and_reversed_after_reconnect(self):
        rig = self.rig()
        self.handler.silent = True
        d = rig.service.request(purchase(900))
        rig.flush()
        rig.kill(7001)
        f = self.failureResultOf(d, InDoubtLinkLost)
        self.assertEqual(self.outcome(rig, f.value.key)["state"], "in-doubt")
        self.handler.silent = False
        rig.advance(1)
        rig.connectPending()
        self.assertEqual(self.outcome(rig, f.value.key)["state"], "reversed")
        self.assertEqual(self.handler.spent[PAN], 0)

    def test_cancelled_after_sending_is_in_doubt(self):
        rig = self.rig()
        self.handler.silent = True
        d = rig.service.request(purchase(200))
        rig.flush()
        d.cancel()
        f = self.failureResultOf(d, InDoubt)
        self.assertIn("in doubt and is being reversed", str(f.value))
        self.handler.silent = False
        for held, answer in self.handler.held:
            held.callback(answer)
        rig.flush()
        self.assertEqual(self.outcome(rig, f.value.key)["state"], "reversed")
        self.assertEqual(self.handler.spent[PAN], 0)

    def test_uncertain_answer_is_reversed(self):
        handler = SilentThenDemo()
        rig = self.rig(handler=handler)
        original = handler.handle
        handler.handle = lambda m: {"resp": "91"} if m["mti"] == "0200" and original(m) else original(m)
        d = rig.service.request(purchase(300))
        rig.flush()
        f = self.failureResultOf(d, InDoubtAnswer)
        self.assertIn("answered 91", str(f.value))
        self.assertEqual(self.outcome(rig, f.value.key)["state"], "reversed")
        # The back end had applied it; the reversal gave the money back.
        self.assertEqual(handler.spent[PAN], 0)

    def test_reversal_key_collision_gets_a_new_key(self):
        handler = SilentThenDemo()
        rig = self.rig(handler=handler)
        original = handler.handle
        collided = []

        def handle(m):
            if m["mti"] == "0420" and not collided:
                collided.append(m["stan"])
                return {"resp": "94"}
            return original(m)

        handler.handle = handle
        key = timedOutThenAnswered(self, rig, handler, 300)
        rig.advance(1)
        entry = self.outcome(rig, key)
        self.assertEqual(entry["state"], "reversed")
        self.assertNotEqual(entry["reversal_stan"], collided[0])
        self.assertEqual(rig.service.settings.stans.inFlight(), 0)

    def test_no_send_without_budget(self):
        rig = self.rig(timeout=5)
        rig.kill(7001)
        d = rig.service.request(purchase(10))
        rig.reactor.advance(4.97)
        # The link comes back with 30 ms of the request's 5 s left.
        rig.connectPending()
        f = self.failureResultOf(d, NoLinkAvailable)
        self.assertIn("in time", str(f.value))
        self.assertEqual(self.successResultOf(rig.service.journal.counts()), {"declined": 1})

    def test_no_send_when_journalling_took_the_budget(self):
        rig = self.rig(timeout=5)
        rig.service.minimumBudget = 6  # more than the request's whole budget
        d = rig.service.request(purchase(10))
        rig.flush()
        f = self.failureResultOf(d, NoLinkAvailable)
        self.assertIn("after journalling", str(f.value))
        self.assertEqual(self.successResultOf(rig.service.journal.counts()), {"declined": 1})
        self.assertNotIn(PAN, self.handler.spent)
        self.assertEqual(rig.service.settings.stans.inFlight(), 0)

    def test_never_sent_is_declined_not_reversed(self):
        rig = self.rig()
        rig.kill(7001)
        d = rig.service.request(purchase(10))
        rig.reactor.advance(5)
        self.failureResultOf(d, NoLinkAvailable)
        [entry] = self.successResultOf(rig.service.journal.unfinished()) or [None]
        self.assertIsNone(entry)
        counts = self.successResultOf(rig.service.journal.counts())
        self.assertEqual(counts, {"declined": 1})

    def test_duplicate_key(self):
        rig = self.rig()
        m = purchase(10, sender="PLATFORM", stan="000500", time="1125120000")
        d = rig.service.request(m)
        rig.flush()
        self.successResultOf(d)
        self.failureResultOf(rig.service.request(m), DuplicateKey)
        self.assertEqual(self.handler.spent[PAN], 10)

    def test_restart_resumes_unfinished(self):
        path = self.mktemp()
        handler = SilentThenDemo()
        key = diesInFlight(path, handler)
        second = PoolRig(ports=(7001,), handlers=[handler], journalPath=path, timeout=5)
        self.addCleanup(second.service.journal.close)
        second.flush()
        entry = self.successResultOf(second.service.outcome(key))
        self.assertEqual(entry["state"], "reversed")
        self.assertEqual(handler.spent[PAN], 0)

    def test_ladder(self):
        e = self.assertRaises(ValueError, PlatformService, ["h:1"], timeout=60, terminal_deadline=60)
        self.assertIn("terminal deadline", str(e))
        PlatformService(["h:1"], timeout=59, terminal_deadline=60)

    def test_journal_file(self):
        j = PlatformJournal("sqlite:" + self.mktemp(), threaded=False)
        self.successResultOf(j.record(dict(purchase(), sender="S", stan="000001", time="t", order="O")))
        self.assertEqual([e["state"] for e in self.successResultOf(j.byOrder("O"))], ["pending"])
        self.successResultOf(j.close())
        self.assertRaises(ValueError, PlatformJournal, "sqlite:")

    def test_newOrderIsCheckedAsItIsRecorded(self):
        """
        A purchase recorded as a new order is written only if no purchase
        sent decides its order: one declined before it was sent does not,
        a pending or approved one does (L{OrderDecided}, with the
        entries, and nothing written). Orders are per terminal.
        """
        self.checkNewOrders(insertFirst=True)

    def test_newOrderIsCheckedFirstWithoutTheIndex(self):
        """
        The same, with the order read before the insert (a journal without
        the order index, or PostgreSQL).
        """
        self.checkNewOrders(insertFirst=False)

    def test_newOrderIsOneStatement(self):
        """
        On SQLite a new order's purchase is one INSERT, without a
        savepoint, and its outcome one UPDATE; the order's entries are
        read only when the index refuses the insert.
        """
        from tvlink.errors import OrderDecided

        j = PlatformJournal("sqlite:" + self.mktemp(), threaded=False)
        self.addCleanup(j.close)
        self.assertTrue(j.insertFirst)
        statements = []
        j.store.conn.set_trace_callback(lambda sql: statements.append(sql.split()[0]))
        message = dict(purchase(), sender="S", stan="000001", time="t", order="O")
        self.successResultOf(j.record(message, None, newOrder=True))
        self.successResultOf(j.settle(("S", "000001", "t"), "approved", "00"))
        self.assertEqual(statements, ["BEGIN", "INSERT", "COMMIT", "BEGIN", "UPDATE", "COMMIT"])
        del statements[:]
        self.failureResultOf(j.record(dict(message, stan="000002"), None, newOrder=True), OrderDecided)
        self.assertEqual(statements, ["BEGIN", "INSERT", "SELECT", "COMMIT"])

    def test_formerOrderIndexReplaced(self):
        """
        A journal whose one-purchase-per-order index is the former one, on
        the order alone, gets the index per terminal in its place: the
        same order from two terminals is two purchases, and new orders are
        inserted first again.
        """
        from tvlink.platform.journal import FORMER_ORDER_INDEXES, ORDER_INDEX, STANDING_PURCHASE

        path = self.mktemp()
        j = PlatformJournal("sqlite:" + path, threaded=False)
        j.store.conn.execute("DROP INDEX %s" % (ORDER_INDEX,))
        j.store.conn.execute(
            "CREATE UNIQUE INDEX %s ON entries (order_id) WHERE %s" % (FORMER_ORDER_INDEXES[0], STANDING_PURCHASE)
        )
        self.successResultOf(j.close())
        j = PlatformJournal("sqlite:" + path, threaded=False)
        self.addCleanup(j.close)
        self.assertTrue(j.insertFirst)
        names = {row[0] for row in j.store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        self.assertIn(ORDER_INDEX, names)
        self.assertNotIn(FORMER_ORDER_INDEXES[0], names)
        for stan, terminal in (("000001", "tv-1"), ("000002", "tv-2")):
            message = dict(purchase(), sender="S", stan=stan, time="t", order="O")
            self.successResultOf(j.record(message, terminal, newOrder=True))
        self.assertEqual(len(self.successResultOf(j.byOrder("O", "tv-2"))), 1)

    def checkNewOrders(self, insertFirst):
        from tvlink.errors import OrderDecided
        from tvlink.link import wire

        j = PlatformJournal("sqlite:" + self.mktemp(), threaded=False)
        self.addCleanup(j.close)
        j.insertFirst = insertFirst

        def record(stan, terminal=None):
            message = dict(purchase(), sender="S", stan=stan, time="t", order="O")
            return j.record(message, terminal, newOrder=True)

        self.successResultOf(record("000001"))
        self.successResultOf(j.settle(("S", "000001", "t"), "declined", wire.DESTINATION_UNAVAILABLE, "no link"))
        self.successResultOf(record("000002"))
        failure = self.failureResultOf(record("000003"), OrderDecided)
        self.assertEqual([e["stan"] for e in failure.value.entries], ["000001", "000002"])
        self.successResultOf(j.settle(("S", "000002", "t"), "approved", "00"))
        self.failureResultOf(record("000004"), OrderDecided)
        self.assertEqual(len(self.successResultOf(j.byOrder("O"))), 2)
        self.successResultOf(record("000005", terminal="tv-1"))
        self.assertEqual([e["terminal"] for e in self.successResultOf(j.byOrder("O", "tv-1"))], ["tv-1"])


class StopTests(SynchronousTestCase):
    def test_answer_during_drain_is_journalled(self):
        path = self.mktemp()
        handler = SilentThenDemo()
        rig = PoolRig(ports=(7001,), handlers=[handler], journalPath=path, timeout=5)
        # The service opens (and so closes) its own journal when given a path.
        rig.service._journalOption = "sqlite:" + path
        handler.silent = True
        d = rig.service.request(purchase(100))
        rig.flush()
        stopped = rig.service.stopService()
        self.assertNoResult(stopped)
        journal = rig.service.journal
        held, answer = handler.held.pop()
        held.callback(answer)
        rig.flush()
        self.assertEqual(self.successResultOf(d)["resp"], "00")
        self.successResultOf(stopped)
        self.assertIsNone(rig.service.journal)
        reopened = PlatformJournal(path, threaded=False)
        self.addCleanup(reopened.close)
        self.assertEqual(self.successResultOf(reopened.counts()), {"approved": 1})
        self.assertTrue(journal.store.closed)


#: The entries table as tvlink made it before card numbers were sealed.
OLD_SCHEMA = """CREATE TABLE entries (
    sender TEXT NOT NULL, stan TEXT NOT NULL, time TEXT NOT NULL,
    order_id TEXT, mti TEXT NOT NULL, proc TEXT, amount TEXT, currency TEXT,
    pan TEXT, orig TEXT,
    state TEXT NOT NULL, resp TEXT, late_resp TEXT, reason TEXT,
    reversal_stan TEXT, reversal_time TEXT, reversal_attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (sender, stan, time))"""


def fileBytes(path):
    """
    The bytes of the SQLite file at C{path} and of its WAL and other
    companions.
    """
    data = b""
    for name in sorted(glob.glob(path + "*")):
        with open(name, "rb") as f:
            data += f.read()
    return data


class CardTests(SynchronousTestCase):
    """
    The journal with a L{CardVault}: sealed cards, and reversals that
    carry them.
    """

    def rig(self, path=None, vault=None, handler=None, codec=None):
        self.path = path if path is not None else self.mktemp()
        handler = handler if handler is not None else SilentThenDemo()
        reversals = []
        original = handler.handle

        def handle(message):
            if message["mti"] == "0420":
                reversals.append(message)
            return original(message)

        handler.handle = handle
        rig = PoolRig(ports=(7001,), handlers=[handler], journalPath=self.path, timeout=5, vault=vault, codec=codec)
        self.addCleanup(lambda: rig.service.journal and rig.service.journal.close())
        return rig, handler, reversals

    def inDoubt(self, rig, handler, amount=700):
        key = timedOutThenAnswered(self, rig, handler, amount)
        rig.flush()
        return key

    def test_sealedBesideMasked(self):
        vault = CardVault(os.urandom(32))
        rig, handler, _ = self.rig(vault=vault)
        d = rig.service.request(purchase(100))
        rig.flush()
        answer = self.successResultOf(d)
        key = (answer["sender"], answer["stan"], answer["time"])
        entry = self.successResultOf(rig.service.outcome(key))
        self.assertIn("pan_sealed", COLUMNS)
        self.assertEqual(entry["pan"], "622202*********0018")
        self.assertTrue(entry["pan_sealed"].startswith("v1:" + vault.keyId + ":"))
        self.assertEqual(vault.open(entry["pan_sealed"], key), PAN)
        self.assertNotIn(PAN.encode("ascii"), fileBytes(self.path))

    def test_noVaultNoSealedCard(self):
        events = Events(self)
        rig, handler, _ = self.rig()
        [warning] = [e for e in events.events if e.get("journal_event") == "no-card-key"]
        self.assertIn("reversals will not carry the card", warning["log_format"])
        d = rig.service.request(purchase(100))
        rig.flush()
        answer = self.successResultOf(d)
        entry = self.successResultOf(rig.service.outcome((answer["sender"], answer["stan"], answer["time"])))
        self.assertEqual(entry["pan"], "622202*********0018")
        self.assertIsNone(entry["pan_sealed"])
        self.assertNotIn(PAN.encode("ascii"), fileBytes(self.path))

    def test_noCardKeyNotLoggedWithVault(self):
        events = Events(self)
        self.rig(vault=CardVault(os.urandom(32)))
        self.assertEqual([e for e in events.events if e.get("journal_event") == "no-card-key"], [])

    def test_reversalCarriesCard(self):
        rig, handler, reversals = self.rig(vault=CardVault(os.urandom(32)))
        events = Events(self)
        key = self.inDoubt(rig, handler)
        self.assertEqual(self.successResultOf(rig.service.outcome(key))["state"], "reversed")
        self.assertEqual([m["pan"] for m in reversals], [PAN])
        self.assertEqual(reversals[0]["orig"]["stan"], key[1])
        self.assertNotIn(PAN.encode("ascii"), fileBytes(self.path))
        for event in events.events:
            self.assertNotIn(PAN, repr(event))

    def test_reversalCarriesCardOverISO8583(self):
        """
        Under the C{iso8583} and C{cups} codecs the reversal's card crosses
        the link in field 2: the payment side, which decoded the bytes,
        sees it.
        """
        for codec in ("iso8583", "cups"):
            rig, handler, reversals = self.rig(vault=CardVault(os.urandom(32)), codec=codec)
            key = self.inDoubt(rig, handler)
            self.assertEqual(self.successResultOf(rig.service.outcome(key))["state"], "reversed", codec)
            self.assertEqual([m["pan"] for m in reversals], [PAN], codec)
            self.assertEqual(reversals[0]["orig"]["stan"], key[1], codec)

    def test_reversalWithoutVault(self):
        rig, handler, reversals = self.rig()
        key = self.inDoubt(rig, handler)
        self.assertEqual(self.successResultOf(rig.service.outcome(key))["state"], "reversed")
        self.assertEqual(len(reversals), 1)
        self.assertNotIn("pan", reversals[0])

    def test_reversalWithWrongKeyGoesWithoutCard(self):
        """
        A card sealed under another key is not opened into garbage: the
        reversal goes out (it must) without the card, and the journal
        says why.
        """
        path = self.mktemp()
        journal = PlatformJournal(path, threaded=False, vault=CardVault(os.urandom(32)))
        message = dict(purchase(), sender="PLATFORM", stan="000900", time="1204120000")
        self.successResultOf(journal.record(message))
        self.successResultOf(journal.close())
        events = Events(self)
        rig, handler, reversals = self.rig(path=path, vault=CardVault(os.urandom(32)))
        self.assertEqual(self.successResultOf(rig.service.outcome(("PLATFORM", "000900", "1204120000")))["state"], "reversed")
        self.assertEqual(len(reversals), 1)
        self.assertNotIn("pan", reversals[0])
        [refused] = [e for e in events.events if e.get("journal_event") == "card-unopened"]
        self.assertIn("sealed under key", refused["why"])

    def test_restartResumedReversalCarriesCard(self):
        path = self.mktemp()
        key = os.urandom(32)
        handler = SilentThenDemo()
        original = diesInFlight(path, handler, vault=CardVault(key))
        second, handler, reversals = self.rig(path=path, vault=CardVault(key), handler=handler)
        self.assertEqual(self.successResultOf(second.service.outcome(original))["state"], "reversed")
        self.assertEqual([m["pan"] for m in reversals], [PAN])
        self.assertEqual(handler.spent[PAN], 0)

    def test_migrateOldJournal(self):
        path = self.mktemp()
        conn = sqlite3.connect(path)
        conn.execute(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO entries (sender, stan, time, mti, pan, state, created, updated)"
            " VALUES ('PLATFORM', '000001', '1204120000', '0200', '622202*********0018', 'approved', 1, 1)"
        )
        conn.commit()
        conn.close()
        for attempt in range(2):
            journal = PlatformJournal(path, threaded=False, vault=CardVault(os.urandom(32)))
            entry = self.successResultOf(journal.get(("PLATFORM", "000001", "1204120000")))
            self.assertEqual((entry["state"], entry["pan"], entry["pan_sealed"]), ("approved", "622202*********0018", None))
            message = dict(purchase(), sender="PLATFORM", stan="00000%d" % (2 + attempt,), time="1204120000")
            self.successResultOf(journal.record(message))
            self.successResultOf(journal.close())
        conn = sqlite3.connect(path)
        names = [row[1] for row in conn.execute("PRAGMA table_info(entries)")]
        conn.close()
        self.assertEqual(names.count("pan_sealed"), 1)
