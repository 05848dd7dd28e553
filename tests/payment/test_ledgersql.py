"""
Tests for L{tvlink.store.ledgersql}: the ledger's SQLite file and schema,
and the one door between the ledger's rules and its database.
"""

import hashlib
import os
import sqlite3

from twisted.trial import unittest

from tests.ledgerkit import OTHER, PAN, balanceInquiry, message, purchase, refund, reversal, statusInquiry
from tvlink.payment import accounts
from tvlink.payment.errors import LedgerError, LedgerNotFound, NotALedger
from tvlink.payment.rules import ACTIVE, FROZEN, applyMessage, stateOf
from tvlink.store.ledgersql import SCHEMA_VERSION, LedgerStore
from tvlink.store.ledgersqlite import SQLiteLedgerStore


class _Recording(SQLiteLedgerStore):
    """
    A SQLite store noting every statement the rules run through it.
    """

    def __init__(self, conn, path):
        SQLiteLedgerStore.__init__(self, conn, path)
        self.statements = []

    def _execute(self, sql, params=()):
        self.statements.append(sql)
        return SQLiteLedgerStore._execute(self, sql, params)


class SQLiteFileTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp() + ".db")

    def test_schema(self):
        """
        A new ledger has schema version 1: the two tables and the index on
        a refund's or reversal's original, as the first tvlink wrote them.
        """
        SQLiteLedgerStore.open(self.path).close()
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(SCHEMA_VERSION, 1)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], 1)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        objects = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        self.assertEqual(
            [(kind, name) for kind, name, sql in objects],
            [("table", "accounts"), ("table", "journal"), ("index", "journal_orig"),
             ("index", "sqlite_autoindex_accounts_1"), ("index", "sqlite_autoindex_journal_1")],
        )
        written = [sql for kind, name, sql in objects if sql is not None]
        self.assertEqual(
            written, [s.replace(" IF NOT EXISTS", "") for s in SQLiteLedgerStore.SCHEMA]
        )
        # The text of schema version 1, as it was first released: changing
        # it means a new SCHEMA_VERSION and a migration, not an edit.
        self.assertEqual(
            hashlib.sha256("\n".join(SQLiteLedgerStore.SCHEMA).encode()).hexdigest(),
            "79dfe9f6eb2f7f92b8d9beb0386152fdfadf4453a3ffcd17ec02c0f15f110bd2",
        )
        columns = [row[1] for row in conn.execute("PRAGMA table_info(journal)")]
        self.assertEqual(
            columns,
            ["id", "sender", "stan", "time", "mti", "proc", "pan", "amount", "order_id", "orig_mti",
             "orig_sender", "orig_stan", "orig_time", "resp", "state", "refunded", "answer",
             "fingerprint", "applied_at"],
        )

    def test_openTwice(self):
        """
        Opening an existing ledger, creating or not, keeps what it holds.
        """
        store = SQLiteLedgerStore.open(self.path)
        with store.transaction():
            accounts.openAccount(store, PAN, 100, "T")
        store.close()
        for create in (True, False):
            store = SQLiteLedgerStore.open(self.path, create=create)
            self.assertEqual(accounts.getAccount(store, PAN)["balance"], 100)
            store.close()

    def test_missing(self):
        self.assertRaises(LedgerNotFound, SQLiteLedgerStore.open, self.path, create=False)
        self.assertFalse(os.path.exists(self.path))

    def test_notALedger(self):
        sqlite3.connect(self.path).execute("CREATE TABLE t (x)").connection.close()
        e = self.assertRaises(NotALedger, SQLiteLedgerStore.open, self.path, create=False)
        self.assertIn("not a tvlink ledger", str(e))

    def test_newerSchemaRefused(self):
        """
        A ledger of a newer schema is refused, and left as it is.
        """
        SQLiteLedgerStore.open(self.path).close()
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA user_version = 2")
        conn.close()
        for create in (True, False):
            e = self.assertRaises(LedgerError, SQLiteLedgerStore.open, self.path, create=create)
            self.assertIn("schema version 2; this tvlink knows 1", str(e))
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], 2)

    def test_transactionRollsBack(self):
        store = SQLiteLedgerStore.open(self.path)
        self.addCleanup(store.close)
        with self.assertRaises(ZeroDivisionError):
            with store.transaction():
                accounts.openAccount(store, PAN, 100, "T")
                1 / 0
        self.assertEqual(accounts.listAccounts(store), [])


class OneDoorTests(unittest.SynchronousTestCase):
    """
    The rules reach the database only through the statements a
    L{LedgerStore} holds, so a store for another database changes those
    and nothing else.
    """

    def test_everyStatementIsTheStores(self):
        store = _Recording.open(os.path.abspath(self.mktemp() + ".db"))
        self.addCleanup(store.close)
        buy, other = purchase("000001", 2500), purchase("000002", 1000)
        back, otherBack = refund("000003", buy, 500), refund("000004", other, 100)
        with store.transaction():
            accounts.openAccount(store, PAN, 10000, "T")
            accounts.openAccount(store, OTHER, 10000, "T")
            self.assertEqual(accounts.setStatus(store, OTHER, FROZEN), ACTIVE)
            accounts.setStatus(store, OTHER, ACTIVE)
            for request in (
                buy, buy, other, back, otherBack, balanceInquiry("000005"), statusInquiry("000006", buy),
                reversal("000007", buy), reversal("000008", otherBack),
                reversal("000009", purchase("000010", 1)), purchase("000010", 1),
                message("0200", "310000", "000011"), purchase("000001", 1),
            ):
                applyMessage(store, request, "T")
            stateOf(store, ("PLATFORM", "000001", None))
            accounts.journalEntry(store, ("PLATFORM", "000001", "1125120000"))
            accounts.recentJournal(store, 5)
            self.assertEqual(len(store.moneyMovedBetween("0000000000", "9999999999")), 4)
            self.assertEqual(store.moneyMovedBetween("0000000000", "9999999999", "OTHER"), [])
            self.assertEqual(accounts.reconcile(store)["mismatches"], [])
            self.assertRaises(LedgerError, accounts.openAccount, store, PAN, 1, "T")
        statements = {
            name: getattr(SQLiteLedgerStore, name)
            for name in dir(SQLiteLedgerStore)
            if name.isupper() and isinstance(getattr(SQLiteLedgerStore, name), str)
        }
        self.assertEqual(set(store.statements) - set(statements.values()), set())
        # Every statement was run but those of the writer's savepoints and
        # of a failed transaction, and each is written with ? placeholders
        # only (no %, so a driver wanting %s can translate them).
        unused = {name for name, sql in statements.items() if sql not in store.statements}
        self.assertEqual(unused, {"ROLLBACK", "SAVEPOINT", "ROLLBACK_TO_SAVEPOINT", "RELEASE_SAVEPOINT", "SNAPSHOT"})
        self.assertEqual([sql for sql in statements.values() if "%" in sql], [])
        # The SQLite store says where its SQL differs (how it begins) and
        # shares every other statement.
        self.assertEqual({name for name in statements if name in vars(SQLiteLedgerStore)}, {"BEGIN"})
        self.assertTrue(set(vars(LedgerStore)) >= set(statements))
