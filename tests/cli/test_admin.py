"""
Tests for C{tvlink ledger ...} (L{tvlink.cli.ledger}), run as the operator
runs it: C{python -m tvlink ledger ...} in a child process.
"""

import io
import os
import shlex
import sqlite3
import subprocess
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.ledgerkit import PAN, RealReactorTestCase, balanceInquiry, purchase, refund
from tvlink.cli import ledger as admin
from tvlink.payment.rules import applyMessage
from tvlink.store.ledgersql import openLedgerStore
from tvlink.store.ledgersqlite import SQLiteLedgerStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OTHER = "6222020000000000026"


def childEnv():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def tvlink(*args, cwd=ROOT):
    """
    Run C{python -m tvlink ARGS...} in C{cwd}; return (status, stdout,
    stderr).
    """
    done = subprocess.run(
        [sys.executable, "-m", "tvlink"] + [str(a) for a in args],
        cwd=cwd,
        env=childEnv(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


def inProcess(*args):
    """
    Run C{tvlink ledger ARGS...} in this process (quicker); return
    (status, stdout, stderr).
    """
    out, err = io.StringIO(), io.StringIO()
    status = admin.main([str(a) for a in args], out, err)
    return status, out.getvalue(), err.getvalue()


def applyAll(path, *requests):
    """
    Apply C{requests} to the ledger at C{path}, in this process, with no
    writer thread.
    """
    store = SQLiteLedgerStore.open(path, create=False)
    try:
        for request in requests:
            with store.transaction():
                applyMessage(store, request, "2026-11-25T12:00:00Z")
    finally:
        store.close()


def readmeLedgerSession():
    """
    The C{tvlink ledger} session shown in README.rst, in order: a list of
    C{(argv, expected stdout lines)}, one for each C{$ tvlink ledger ...}
    line (C{argv} after C{tvlink}), with the lines printed under it.
    """
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    session = []
    output = None
    for line in lines:
        text = line.strip()
        if text.startswith("$ tvlink ledger "):
            output = []
            session.append((shlex.split(text[2:])[1:], output))
        elif output is not None and text and not text.startswith("$ "):
            output.append(text)
        else:
            output = None
    return session


class LedgerCommandTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.abspath(self.mktemp() + ".db")

    def ledger(self, *args):
        return tvlink("ledger", "--db", self.path, *args)

    def test_missingLedger(self):
        status, out, err = self.ledger("show", PAN)
        self.assertEqual(status, 1)
        self.assertIn("no ledger at %s" % (self.path,), err)
        self.assertIn("tvlink ledger --db %s init" % (self.path,), err)
        self.assertFalse(os.path.exists(self.path), "a read created the ledger file")

    def test_readmeSession(self):
        """
        The commands README.rst shows, run in order on a new file, print
        what it shows; C{open} before C{init} is refused with the command
        that creates the file, and creates nothing.
        """
        session = readmeLedgerSession()
        self.assertEqual(
            [argv[:4] for argv, output in session],
            [["ledger", "--db", "ledger.db", "init"], ["ledger", "--db", "ledger.db", "open"]],
            session,
        )
        here = os.path.abspath(self.mktemp())
        os.makedirs(here)
        openArgv = session[1][0]
        status, out, err = tvlink(*openArgv, cwd=here)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            "tvlink ledger open: no ledger at ledger.db; create it first with:"
            " tvlink ledger --db ledger.db init"
            " (a payment node started with --ledger sqlite:ledger.db creates it too)\n",
        )
        self.assertEqual(os.listdir(here), [])
        for argv, output in session:
            status, out, err = tvlink(*argv, cwd=here)
            self.assertEqual((status, err), (0, ""), argv)
            self.assertEqual(out.splitlines(), output, argv)
        # init again is harmless, and the account is there.
        self.assertEqual(tvlink(*session[0][0], cwd=here)[:2], (0, session[0][1][0] + "\n"))
        status, out, err = tvlink("ledger", "--db", "ledger.db", "show", openArgv[4], cwd=here)
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"balance\s+1000\.00 \(100000 fen\)")

    def test_accountLifeCycle(self):
        status, out, err = self.ledger("init")
        self.assertEqual((status, err), (0, ""))
        status, out, err = self.ledger("open", PAN, "100000")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("622202*********0018", out)
        self.assertIn("1000.00 (100000 fen)", out)
        self.assertNotIn(PAN, out)

        status, out, err = self.ledger("open", PAN, "5")
        self.assertEqual(status, 1)
        self.assertIn("already open", err)

        status, out, err = self.ledger("show", PAN)
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"status\s+active")
        self.assertRegex(out, r"balance\s+1000\.00 \(100000 fen\)")

        status, out, err = self.ledger("freeze", PAN)
        self.assertEqual((status, out.strip()), (0, "card 622202*********0018 is now frozen"))
        status, out, err = self.ledger("freeze", PAN)
        self.assertEqual((status, out.strip()), (0, "card 622202*********0018 was already frozen"))
        self.assertEqual(self.ledger("show", PAN)[1].count("frozen"), 1)
        applyAll(self.path, purchase("000001", 100))
        status, out, err = self.ledger("unfreeze", PAN)
        self.assertEqual((status, out.strip()), (0, "card 622202*********0018 is now active"))

        self.assertEqual(self.ledger("open", OTHER, "0")[0], 0)
        status, out, err = self.ledger("list")
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 4, out)
        self.assertIn("622202*********0018", lines[1])
        self.assertIn("100000", lines[1])
        self.assertIn("622202*********0026", lines[2])
        self.assertEqual(lines[3], "2 accounts")

    def test_refusals(self):
        self.assertEqual(self.ledger("init")[0], 0)
        # In this process, for speed: the child process is tried above.
        for args, status, words in [
            (("open", PAN, "12.50"), 2, "whole number of fen"),
            (("open", PAN, "-5"), 2, "whole number of fen"),
            (("open", PAN, "1000000000000"), 2, "999999999999"),
            (("open", "1234", "5"), 2, "12 to 19"),
            (("open", "62220200000000000x8", "5"), 2, "12 to 19"),
            (("show", OTHER), 1, "no account for card 622202*********0026"),
            (("freeze", OTHER), 1, "no account"),
            (("unfreeze", OTHER), 1, "no account"),
            (("journal", "--limit", "0"), 2, "--limit"),
        ]:
            got, out, err = inProcess("--db", self.path, *args)
            self.assertEqual(got, status, (args, out, err))
            self.assertIn(words, err, args)
            self.assertNotIn(OTHER, err)

    def test_usage(self):
        status, out, err = tvlink("ledger", "--db", self.path, "bogus")
        self.assertEqual(status, 2)
        self.assertIn("usage: tvlink ledger", err)
        self.assertIn("invalid choice: 'bogus'", err)
        status, out, err = tvlink("frobnicate")
        self.assertEqual(status, 2)
        self.assertIn("unknown command", err)
        for args in [(), ("--db", self.path), ("--db", self.path, "open", PAN), ("--db", "sqlite:", "list")]:
            status, out, err = inProcess(*args)
            self.assertEqual(status, 2, args)
            self.assertIn("tvlink ledger", err, args)
        status, out, err = inProcess("--help")
        self.assertEqual(status, 0)
        for command in ("open", "show", "list", "freeze", "unfreeze", "journal", "check"):
            self.assertIn(command, out)
        from tvlink.cli.main import USAGE

        self.assertIn("ledger", USAGE)

    def test_notALedger(self):
        with open(self.path, "wb") as f:
            f.write(b"hello" * 1000)
        status, out, err = self.ledger("list")
        self.assertEqual(status, 1)
        self.assertIn("not a SQLite database", err)
        other = os.path.abspath(self.mktemp() + ".db")
        sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
        status, out, err = tvlink("ledger", "--db", "sqlite:" + other, "list")
        self.assertEqual(status, 1)
        self.assertIn("not a tvlink ledger", err)

    def test_journalAndCheck(self):
        SQLiteLedgerStore.open(self.path).close()
        self.assertEqual(self.ledger("open", PAN, "10000")[0], 0)
        self.assertEqual(self.ledger("journal")[1].strip(), "the journal is empty")
        buy = purchase("000001", 2500)
        applyAll(self.path, buy, refund("000002", buy, 500), balanceInquiry("000003"), purchase("000004", 99999))
        status, out, err = self.ledger("journal")
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 5, out)
        self.assertIn("0200/000000", lines[1])
        self.assertIn("51", lines[1])
        self.assertIn("0220/200000", lines[3])
        self.assertIn("PLATFORM/000001/1125120000", lines[3])
        self.assertIn("refunded", lines[4])
        self.assertIn("622202*********0018", out)
        self.assertNotIn(PAN, out)
        status, out, err = self.ledger("journal", "--limit", "2")
        self.assertEqual(len(out.splitlines()), 3)

        status, out, err = self.ledger("check")
        self.assertEqual(status, 0, err)
        self.assertIn("opening 10000 - purchases 2500 + refunds 500 = 8000 fen; balances 8000 fen", out)
        self.assertIn("every account reconciles", out)
        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute("UPDATE accounts SET balance = balance + 1")
        conn.close()
        status, out, err = self.ledger("check")
        self.assertEqual(status, 1)
        self.assertIn("MISMATCH card 622202*********0018: expected 8000 fen, balance 8001 fen", out)


class WhileRunningTests(RealReactorTestCase):
    """
    The admin command against the file of a ledger that is open and busy.
    """

    @inlineCallbacks
    def test_openWhileRunning(self):
        ledger = yield self.newLedger(path=os.path.abspath(self.mktemp() + ".db"))
        yield ledger.apply(purchase("000001", 100))
        busy = [ledger.apply(purchase("%06d" % (i,), 1)) for i in range(2, 200)]
        out, err, status = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "tvlink", "ledger", "--db", ledger.path, "open", "6222020000000000026", "500"],
            env=childEnv(),
            path=ROOT,
        )
        self.assertEqual(status, 0, err)
        for d in busy:
            yield d
        answer = yield ledger.apply(purchase("000300", 500, pan="6222020000000000026"))
        self.assertEqual(answer, {"resp": "00"})
        out, err, status = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "tvlink", "ledger", "--db", ledger.path, "show", PAN],
            env=childEnv(),
            path=ROOT,
        )
        self.assertEqual(status, 0, err)
        self.assertIn(b"(9702 fen)", out)


class PostgreSQLLedgerCommandTests(unittest.TestCase):
    """
    C{tvlink ledger --db postgresql://...}: the same commands on a ledger
    several payment nodes share (a real server, L{tests.pgcluster}).
    """

    def setUp(self):
        from tests import pgcluster

        self.url = pgcluster.newDatabase()

    def ledger(self, *args):
        return inProcess("--db", self.url, *args)

    def test_commands(self):
        status, out, err = self.ledger("show", PAN)
        self.assertEqual(status, 1)
        self.assertIn("no ledger at %s" % (self.url,), err)
        for _ in range(2):
            self.assertEqual(self.ledger("init"), (0, "ledger %s ready\n" % (self.url,), ""))
        self.assertEqual(self.ledger("open", PAN, "10000")[0], 0)
        self.assertEqual(self.ledger("open", OTHER, "0")[0], 0)
        status, out, err = self.ledger("open", PAN, "5")
        self.assertEqual(status, 1)
        self.assertIn("already open", err)
        store = openLedgerStore(self.url, create=False)
        with store.transaction():
            buy = purchase("000001", 2500)
            for request in (buy, refund("000002", buy, 500), purchase("000003", 99999)):
                applyMessage(store, request, "T")
        store.close()
        self.assertEqual(self.ledger("freeze", OTHER)[1].strip(), "card 622202*********0026 is now frozen")
        status, out, err = self.ledger("show", PAN)
        self.assertRegex(out, r"balance\s+80\.00 \(8000 fen\)")
        self.assertEqual(self.ledger("list")[1].splitlines()[-1], "2 accounts")
        self.assertEqual(len(self.ledger("journal")[1].splitlines()), 4)
        status, out, err = self.ledger("check")
        self.assertEqual(status, 0, err)
        self.assertIn("opening 10000 - purchases 2500 + refunds 500 = 8000 fen; balances 8000 fen", out)

    def test_unreachable(self):
        status, out, err = inProcess(
            "--busy-timeout", "1", "--db", "postgresql://tvlink:s3cret@127.0.0.1:1/ledger", "list"
        )
        self.assertEqual(status, 1)
        self.assertIn("postgresql://tvlink:***@127.0.0.1:1/ledger", err)
        self.assertNotIn("s3cret", err)
        status, out, err = inProcess("--db", "postgresql://127.0.0.1:5432", "list")
        self.assertEqual(status, 1)
        self.assertIn("no database name", err)
