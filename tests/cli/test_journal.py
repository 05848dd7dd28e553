"""
Tests for C{tvlink journal ...} (L{tvlink.cli.journal}).
"""

import io
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.cli.test_admin import tvlink
from tests.platform.test_cardvault import keyFile
from tvlink.cli import journal as command
from tvlink.platform.cardvault import CardVault
from tvlink.platform.journal import PlatformJournal

PAN = "6222020000000000018"


def inProcess(*args):
    """
    Run C{tvlink journal ARGS...} in this process; return (status,
    stdout, stderr).
    """
    out, err = io.StringIO(), io.StringIO()
    status = command.main([str(a) for a in args], out, err)
    return status, out.getvalue(), err.getvalue()


class RekeyTests(SynchronousTestCase):
    def setUp(self):
        self.oldKey, self.newKey = os.urandom(32), os.urandom(32)
        self.oldFile, self.newFile = keyFile(self, self.oldKey), keyFile(self, self.newKey)
        self.path = self.mktemp()

    def journal(self, vault, stans=("000001", "000002", "000003")):
        """
        Journal one purchase per STAN in C{stans}, sealed under C{vault};
        return their keys.
        """
        journal = PlatformJournal(self.path, threaded=False, vault=vault)
        keys = []
        for stan in stans:
            message = {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "000000000100",
                       "sender": "PLATFORM", "stan": stan, "time": "1204120000"}
            self.successResultOf(journal.record(message))
            keys.append(("PLATFORM", stan, "1204120000"))
        self.successResultOf(journal.close())
        return keys

    def cards(self, vault, count=None):
        """
        The cards of the first C{count} entries, opened with C{vault}.
        """
        journal = PlatformJournal(self.path, threaded=False, vault=vault)
        self.addCleanup(journal.close)
        entries = self.successResultOf(journal.unfinished())
        return [journal.cardOf(e) for e in entries[:count]]

    def test_rekey(self):
        self.journal(CardVault(self.oldKey))
        status, out, err = inProcess("--db", "sqlite:" + self.path, "rekey", "--old-key", self.oldFile, "--new-key", self.newFile)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("re-sealed 3 card numbers", out)
        self.assertEqual(self.cards(CardVault(self.newKey)), [PAN] * 3)
        # Run again: nothing left to do.
        status, out, err = inProcess("--db", self.path, "rekey", "--old-key", self.oldFile, "--new-key", self.newFile)
        self.assertEqual(status, 0)
        self.assertIn("re-sealed 0 card numbers", out)
        self.assertIn("3 already under the new key", out)

    def test_refusesCardUnderNeitherKey(self):
        self.journal(CardVault(self.oldKey), ("000001", "000002"))
        self.journal(CardVault(os.urandom(32)), ("000003",))
        status, out, err = inProcess("--db", self.path, "rekey", "--old-key", self.oldFile, "--new-key", self.newFile)
        self.assertEqual(status, 1)
        self.assertIn("PLATFORM/000003/1204120000", err)
        self.assertIn("neither the old key", err)
        self.assertIn("nothing was changed", err)
        # One transaction: the two it could re-seal are still under the old key.
        self.assertEqual(self.cards(CardVault(self.oldKey), 2), [PAN] * 2)

    def test_refusals(self):
        status, out, err = inProcess("--db", self.path, "rekey", "--old-key", self.oldFile, "--new-key", self.newFile)
        self.assertEqual(status, 1)
        self.assertIn("no journal at", err)
        self.journal(CardVault(self.oldKey))
        loose = keyFile(self, mode=0o644)
        status, out, err = inProcess("--db", self.path, "rekey", "--old-key", self.oldFile, "--new-key", loose)
        self.assertEqual(status, 1)
        self.assertIn(loose, err)
        status, out, err = inProcess("--db", self.path, "rekey", "--old-key", self.oldFile, "--new-key", self.oldFile)
        self.assertEqual(status, 1)
        self.assertIn("same key", err)
        status, out, err = inProcess("--db", self.path, "rekey", "--old-key", self.oldFile)
        self.assertEqual(status, 2)
        self.assertIn("--new-key", err)

    def test_list(self):
        self.journal(CardVault(self.oldKey), ("000001",))
        status, out, err = inProcess("--db", self.path, "list")
        self.assertEqual(status, 0)
        self.assertIn("PLATFORM/000001/1204120000 0200", out)
        self.assertIn("622202*********0018", out)
        self.assertNotIn(PAN, out)

    def test_asTheOperatorRunsIt(self):
        self.journal(CardVault(self.oldKey), ("000001",))
        status, out, err = tvlink("journal", "--db", os.path.abspath(self.path), "rekey",
                                  "--old-key", os.path.abspath(self.oldFile), "--new-key", os.path.abspath(self.newFile))
        self.assertEqual(status, 0, err)
        self.assertIn("re-sealed 1 card numbers", out)
        status, out, err = tvlink("--help")
        self.assertIn("journal", out)


class InspectTests(SynchronousTestCase):
    """
    C{tvlink journal list|show|check} on a SQLite file.
    """

    def where(self):
        return self.mktemp()

    def setUp(self):
        self.db = self.where()
        journal = PlatformJournal(self.db, threaded=False, owner="platform-1")
        for stan, order in (("000001", "O1"), ("000002", "O2")):
            message = {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "000000000100",
                       "sender": "PLATFORM", "stan": stan, "time": "1204120000", "order": order}
            self.successResultOf(journal.record(message))
        self.successResultOf(journal.settle(("PLATFORM", "000001", "1204120000"), "approved", "00"))
        self.successResultOf(journal.renewLease())
        self.successResultOf(journal.close())

    def test_list(self):
        status, out, err = inProcess("--db", self.db, "list")
        self.assertEqual(status, 0, err)
        self.assertEqual(len(out.splitlines()), 2)
        self.assertNotIn(PAN, out)

    def test_show(self):
        status, out, err = inProcess("--db", self.db, "show", "PLATFORM/000001/1204120000")
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"state\s+approved")
        self.assertRegex(out, r"owner\s+platform-1")
        self.assertNotIn(PAN, out)
        status, out, err = inProcess("--db", self.db, "show", "--order", "O2")
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"stan\s+000002")
        self.assertEqual(inProcess("--db", self.db, "show", "--order", "nope")[0], 1)
        self.assertEqual(inProcess("--db", self.db, "show")[0], 2)
        self.assertEqual(inProcess("--db", self.db, "show", "PLATFORM/1")[0], 2)

    def test_check(self):
        status, out, err = inProcess("--db", self.db, "check")
        self.assertEqual(status, 0, err)
        self.assertIn("2 entries: approved 1, pending 1", out)
        self.assertIn("unfinished PLATFORM/000002/1204120000 pending, owner platform-1", out)
        self.assertIn("no order has two standing purchases", out)


class PostgreSQLInspectTests(InspectTests):
    """
    The same on a PostgreSQL journal (a real server, L{tests.pgcluster}).
    """

    def where(self):
        from tests import pgcluster

        return pgcluster.newDatabase()

    def test_unreachable(self):
        status, out, err = inProcess("--busy-timeout", "1", "--db", "postgresql://u:pw@127.0.0.1:1/j", "list")
        self.assertEqual(status, 1)
        self.assertIn("postgresql://u:***@127.0.0.1:1/j", err)
        self.assertNotIn(":pw@", err)


class DoubledOrderTests(SynchronousTestCase):
    def test_oldJournalWithDoubledOrder(self):
        """
        A journal made before the one-purchase-per-order index, with an
        order purchased twice, still opens (without the index); C{check}
        names the order and exits 1.
        """
        import sqlite3

        from tests.platform.test_journal import OLD_SCHEMA

        path = self.mktemp()
        conn = sqlite3.connect(path)
        conn.execute(OLD_SCHEMA)
        for stan in ("000001", "000002"):
            conn.execute(
                "INSERT INTO entries (sender, stan, time, order_id, mti, proc, state, created, updated)"
                " VALUES ('PLATFORM', ?, 't', 'O', '0200', '000000', 'approved', 1, 1)",
                (stan,),
            )
        conn.commit()
        conn.close()
        journal = PlatformJournal(path, threaded=False)
        self.assertEqual(journal.store.migrated, ["pan_sealed", "terminal", "owner"])
        # Without the order index, a new order is read before it is
        # inserted.
        self.assertFalse(journal.insertFirst)
        self.successResultOf(journal.close())
        status, out, err = inProcess("--db", path, "check")
        self.assertEqual(status, 1, err)
        self.assertIn("DOUBLED order O has 2 standing purchases", out)
