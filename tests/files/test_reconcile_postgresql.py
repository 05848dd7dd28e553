"""
The day's reconciliation with both stores on PostgreSQL: C{tvlink ledger
--db postgresql://... reconcile-file} writes the file from the shared
ledger and C{tvlink reconcile --journal postgresql://...} checks it
against the shared journal (a real server, L{tests.pgcluster}).
"""

import datetime
import io
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests import pgcluster
from tests.files.kit import tempRoot
from tests.files.test_reconcile import DAY, PAN, SENDER, purchase
from tvlink.cli import ledger as ledgercli
from tvlink.cli import reconcile as reconcilecli
from tvlink.payment import accounts
from tvlink.payment.rules import applyMessage
from tvlink.platform.journal import PlatformJournal
from tvlink.store.ledgersql import openLedgerStore


def run(main, *argv):
    out, err = io.StringIO(), io.StringIO()
    status = main([str(a) for a in argv], out, err)
    return status, out.getvalue(), err.getvalue()


class PostgreSQLReconciliationTests(SynchronousTestCase):
    def test_dayOnPostgreSQL(self):
        """
        Two purchases on both sides and one only on the payment side: the
        file holds the payment side's three, the check matches two and
        reports the third.
        """
        ledger, journalURL = pgcluster.newDatabase(), pgcluster.newDatabase()
        store = openLedgerStore(ledger)
        self.addCleanup(store.close)
        # The platform writes its entries on the day.
        clock = Clock()
        clock.advance(datetime.datetime(2026, 12, 4, 10, 0, tzinfo=datetime.timezone.utc).timestamp())
        journal = PlatformJournal(journalURL, reactor=clock, threaded=False)
        self.addCleanup(journal.close)
        with store.transaction():
            accounts.openAccount(store, PAN, 1000000, "2026-12-04T00:00:00Z")
        for stan, when, amount, journalled in (
            ("000001", "1204090000", 1000, True),
            ("000002", "1204091000", 3000, True),
            ("000003", "1204100000", 700, False),
        ):
            message = purchase(stan, when, amount)
            with store.transaction():
                self.assertEqual(applyMessage(store, message, "2026-12-04T10:00:00Z").answer["resp"], "00")
            if journalled:
                self.successResultOf(journal.record(message))
                self.successResultOf(journal.settle((SENDER, stan, when), "approved", "00"))
        path = os.path.join(tempRoot(self), "RC%s.txt" % (DAY,))
        status, out, err = run(ledgercli.main, "--db", ledger, "reconcile-file", "--date", DAY, "--sender", SENDER, "--out", path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("3 transactions", out)
        status, out, err = run(reconcilecli.main, "--journal", journalURL, "--file", path)
        self.assertEqual((status, err), (reconcilecli.DISAGREE, ""))
        self.assertIn("2 matched, 0 only on platform, 1 only on payment, 0 differ", out)
        status, out, err = run(reconcilecli.main, "--journal", "postgresql://u:pw@127.0.0.1:1/j", "--file", path)
        self.assertEqual(status, reconcilecli.UNREADABLE)
        self.assertIn("postgresql://u:***@127.0.0.1:1/j", err)
