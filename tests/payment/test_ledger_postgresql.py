"""
The payment ledger on PostgreSQL (L{tvlink.store.ledgerpostgresql.PostgreSQLLedgerStore}):
the same rules as on SQLite, its versioned schema, several ledgers (payment
nodes) on one database at once, and a database that goes away and comes
back. A real server is started for them (L{tests.pgcluster}); without one
they are skipped, under CI they fail.
"""

import psycopg
from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests import pgcluster
from tests.ledgerkit import (
    OTHER,
    PAN,
    WHEN,
    RealReactorTestCase,
    balanceInquiry,
    message,
    purchase,
    refund,
    reversal,
    statusInquiry,
)
from tests.processes import waitUntil
from tvlink.payment import accounts
from tvlink.payment.errors import LedgerError, LedgerNotFound
from tvlink.payment.ledger import PaymentLedger
from tvlink.payment.rules import ACTIVE, FROZEN, applyMessage, stateOf
from tvlink.payment.service import parseLedgerSpec
from tvlink.store.ledgerpostgresql import PostgreSQLLedgerStore
from tvlink.store.ledgersql import SCHEMA_VERSION, openLedgerStore
from tvlink.store.postgresql import checkURL, maskURL


class StoreTests(unittest.SynchronousTestCase):
    """
    L{PostgreSQLLedgerStore} with the rules, in one transaction at a time.
    """

    def setUp(self):
        self.url = pgcluster.newDatabase()

    def test_rulesOnPostgreSQL(self):
        """
        The requests of the SQLite store's own test give the same answers
        and a ledger that reconciles.
        """
        store = openLedgerStore(self.url)
        self.addCleanup(store.close)
        buy, other = purchase("000001", 2500), purchase("000002", 1000, pan=OTHER)
        back = refund("000003", buy, 500)
        with store.transaction():
            accounts.openAccount(store, PAN, 10000, "T")
            accounts.openAccount(store, OTHER, 10000, "T")
            self.assertEqual(accounts.setStatus(store, OTHER, FROZEN), ACTIVE)
            accounts.setStatus(store, OTHER, ACTIVE)
            answers = [
                applyMessage(store, request, "T").answer["resp"]
                for request in (
                    buy, buy, other, back, refund("000004", buy, 2001), balanceInquiry("000005"),
                    statusInquiry("000006", buy), reversal("000007", other),
                    reversal("000009", purchase("000010", 1)), purchase("000010", 1),
                    message("0200", "310000", "000011"), purchase("000001", 1),
                )
            ]
            self.assertEqual(answers, ["00", "00", "00", "00", "13", "00", "00", "00", "00", "12", "12", "94"])
            self.assertEqual(stateOf(store, ("PLATFORM", "000002", WHEN)), "reversed")
            self.assertRaises(LedgerError, accounts.openAccount, store, PAN, 1, "T")
        with store.snapshot():
            report = accounts.reconcile(store)
        self.assertEqual(report["mismatches"], [])
        self.assertEqual(store.account(PAN)["balance"], 10000 - 2500 + 500)
        self.assertEqual(store.account(OTHER)["balance"], 10000)
        self.assertIsInstance(report["totals"]["purchased"], int)

    def test_initTwiceAndVersion(self):
        """
        Creating the schema twice is harmless; opening without creating a
        database holding no ledger says so; a newer schema is refused.
        """
        self.assertRaises(LedgerNotFound, openLedgerStore, self.url, create=False)
        openLedgerStore(self.url).close()
        openLedgerStore(self.url).close()
        store = openLedgerStore(self.url, create=False)
        version = store.conn.execute("SELECT version FROM tvlink_schema WHERE component = 'ledger'").fetchone()[0]
        self.assertEqual(version, SCHEMA_VERSION)
        store.conn.execute("UPDATE tvlink_schema SET version = 99 WHERE component = 'ledger'")
        store.close()
        error = self.assertRaises(LedgerError, openLedgerStore, self.url)
        self.assertIn("schema version 99", str(error))

    def test_olderSchemaMigrated(self):
        """
        A database whose ledger tables predate the version table (version
        0) is brought up to date and gets its version.
        """
        with psycopg.connect(self.url, autocommit=True) as conn:
            for statement in PostgreSQLLedgerStore.SCHEMA[:2]:
                conn.execute(statement)
        store = openLedgerStore(self.url)
        self.addCleanup(store.close)
        indexes = {row[0] for row in store.conn.execute("SELECT indexname FROM pg_indexes").fetchall()}
        self.assertIn("journal_applied", indexes)
        row = store.conn.execute("SELECT version FROM tvlink_schema WHERE component = 'ledger'").fetchone()
        self.assertEqual(row[0], SCHEMA_VERSION)


class UnreachableTests(unittest.SynchronousTestCase):
    """
    Without a server at all.
    """

    def test_unreachable(self):
        """
        A server that is not there: an error naming the URL, the password
        masked.
        """
        url = "postgresql://tvlink:s3cret@127.0.0.1:1/ledger"
        error = self.assertRaises(LedgerError, openLedgerStore, url, busy_timeout=1.0)
        self.assertIn("postgresql://tvlink:***@127.0.0.1:1/ledger", str(error))
        self.assertNotIn("s3cret", str(error))
        self.assertEqual(maskURL("postgresql://u@h:5/d"), "postgresql://u@h:5/d")

    def test_badURLs(self):
        """
        A URL without a database, or with a port that is not a number, is
        refused before any connection, saying why.
        """
        for url, words in (
            ("postgresql://u@h:5432", "no database name"),
            ("postgresql://u:pw@h:x/d", "port is not a number"),
            ("postgresql:///d", "no host"),
        ):
            error = self.assertRaises(ValueError, checkURL, url)
            self.assertIn(words, str(error))
            self.assertNotIn(":pw@", str(error))
        self.assertEqual(parseLedgerSpec("postgresql://u@h:5432/d"), ("postgresql", "postgresql://u@h:5432/d"))
        self.assertRaises(ValueError, parseLedgerSpec, "postgresql://u@h:5432")


class NodesTests(RealReactorTestCase):
    """
    Several L{PaymentLedger}s (each a payment node's) on one database.
    """

    timeout = 60

    def setUp(self):
        self.url = pgcluster.newDatabase()

    def nodes(self, count, opening=((PAN, 10000),), **kwargs):
        nodes = [PaymentLedger(self.url, **kwargs) for _ in range(count)]
        for node in nodes:
            node.open()
            self.addCleanup(node.close)
        d = defer.gatherResults([nodes[0].openAccount(pan, fen) for pan, fen in opening])
        return d.addCallback(lambda _: nodes)

    @inlineCallbacks
    def test_concurrentDebitsNeverOverdraw(self):
        """
        Three nodes debit one account at once, more than it holds: no
        update is lost, it never goes below zero, and the approved ones are
        exactly what left it.
        """
        nodes = yield self.nodes(3)
        requests = [purchase("%06d" % (n,), 70) for n in range(1, 241)]
        answers = yield defer.gatherResults(
            [nodes[n % 3].apply(request) for n, request in enumerate(requests)]
        )
        approved = sum(1 for a in answers if a["resp"] == "00")
        self.assertEqual(approved, 10000 // 70)
        self.assertEqual({a["resp"] for a in answers}, {"00", "51"})
        account = yield nodes[1].account(PAN)
        self.assertEqual(account["balance"], 10000 - 70 * approved)
        report = yield nodes[2].reconcile()
        self.assertEqual(report["mismatches"], [])

    @inlineCallbacks
    def test_sameKeyAtTwoNodesAppliedOnce(self):
        """
        Each key sent to two nodes at once (a retry after a failover) is
        applied once, and both get its first answer.
        """
        nodes = yield self.nodes(2, opening=((PAN, 100000), (OTHER, 100000)))
        requests = [purchase("%06d" % (n,), 100 + n, pan=(PAN, OTHER)[n % 2]) for n in range(1, 101)]
        first = [nodes[0].apply(r) for r in requests]
        second = [nodes[1].apply(r) for r in reversed(requests)]
        a = yield defer.gatherResults(first)
        b = yield defer.gatherResults(second)
        self.assertEqual(a, list(reversed(b)))
        self.assertEqual({x["resp"] for x in a}, {"00"})
        debited = sum(100 + n for n in range(1, 101))
        balances = yield nodes[0].accounts()
        self.assertEqual(sum(x["balance"] for x in balances), 200000 - debited)
        recent = yield nodes[1].recent(1000)
        self.assertEqual(len(recent), 100)
        report = yield nodes[1].reconcile()
        self.assertEqual(report["mismatches"], [])

    @inlineCallbacks
    def test_reversalAtOneNodeBeforeOriginalAtAnother(self):
        """
        A reversal applied by one node declines its original arriving at
        another; a refund is bounded whichever node applies it.
        """
        nodes = yield self.nodes(2)
        late = purchase("000001", 500)
        self.assertEqual((yield nodes[0].apply(reversal("000002", late))), {"resp": "00"})
        self.assertEqual((yield nodes[1].apply(late))["resp"], "12")
        buy = purchase("000003", 1000)
        self.assertEqual((yield nodes[0].apply(buy))["resp"], "00")
        answers = yield defer.gatherResults(
            [nodes[n % 2].apply(refund("%06d" % (10 + n,), buy, 300)) for n in range(5)]
        )
        self.assertEqual(sorted(a["resp"] for a in answers), ["00", "00", "00", "13", "13"])
        account = yield nodes[0].account(PAN)
        self.assertEqual(account["balance"], 10000 - 1000 + 900)

    @inlineCallbacks
    def test_databaseLostAndBack(self):
        """
        The server restarts while a node runs: the node says the database
        is down, reconnects, and a request made while it was away is
        applied once when it is back.
        """
        (node,) = yield self.nodes(1)
        node.reconnectDelay = 0.1
        self.assertEqual((yield node.apply(purchase("000001", 100)))["resp"], "00")
        server = pgcluster.cluster()
        yield deferToThread(server.stopServer)
        # The server is down: a request now waits for it.
        answered = []
        node.apply(purchase("000002", 100)).addCallback(answered.append)
        yield waitUntil(lambda: node.stats()["databaseUp"] == 0, 15, "the node to see the database down")
        self.assertEqual(answered, [])
        yield deferToThread(server.startServer)
        yield waitUntil(lambda: answered, 30, "the request made while the database was down to be answered")
        self.assertEqual(answered[0]["resp"], "00")
        self.assertEqual(node.stats()["databaseUp"], 1)
        self.assertGreaterEqual(node.stats()["reconnects"], 1)
        self.assertEqual((yield node.apply(purchase("000002", 100)))["resp"], "00")
        account = yield node.account(PAN)
        self.assertEqual(account["balance"], 10000 - 200)

    @inlineCallbacks
    def test_connectionLostAfterCommit(self):
        """
        The connection goes as a batch commits: the commit is durable but
        the node hears only an error. It reconnects, runs the batch again,
        finds every request in the journal and answers as first applied;
        nothing moves twice.
        """
        (node,) = yield self.nodes(1)
        node.reconnectDelay = 0.05
        url = self.url
        cut = []
        commit = PostgreSQLLedgerStore.commit

        def commitThenLose(store):
            commit(store)
            if cut:
                return
            cut.append(True)
            # The server ends the node's session, as when it restarts.
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            store.conn.execute("SELECT 1")

        self.patch(PostgreSQLLedgerStore, "commit", commitThenLose)
        answers = yield defer.gatherResults([node.apply(purchase("%06d" % (n,), 100)) for n in range(1, 6)])
        self.assertEqual(answers, [{"resp": "00"}] * 5)
        self.assertEqual(cut, [True])
        account = yield node.account(PAN)
        self.assertEqual(account["balance"], 10000 - 500)
        self.assertGreaterEqual(node.stats()["reconnects"], 1)
        recent = yield node.recent(100)
        self.assertEqual(len(recent), 5)

    @inlineCallbacks
    def test_deadlockedBatchRunAgain(self):
        """
        A batch PostgreSQL rolls back for a deadlock with another node is
        run again whole, and applied once.
        """
        (node,) = yield self.nodes(1)
        commit = PostgreSQLLedgerStore.commit
        deadlocks = []

        def deadlockOnce(store):
            if not deadlocks:
                deadlocks.append(True)
                raise psycopg.errors.DeadlockDetected("deadlock detected (a test's)")
            commit(store)

        self.patch(PostgreSQLLedgerStore, "commit", deadlockOnce)
        answers = yield defer.gatherResults([node.apply(purchase("%06d" % (n,), 100)) for n in range(1, 4)])
        self.assertEqual(answers, [{"resp": "00"}] * 3)
        self.assertEqual(node.stats()["retriedBatches"], 1)
        account = yield node.account(PAN)
        self.assertEqual(account["balance"], 10000 - 300)
