"""
The reconciliation file: its layout, the day a transaction belongs to,
the payment side writing it (by command and after the cut-over) and the
platform comparing it with its journal over a day with one injected
difference of each kind.
"""

import datetime
import io
import json
import os
import sqlite3

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.files.kit import recordSyncs, tempRoot
from tvlink.cli import ledger as ledgercli
from tvlink.cli import reconcile as reconcilecli
from tvlink.files import reconcile
from tvlink.files.daily import DailyReconciliation, dayEnded, dayEnding
from tvlink.files.names import FileStore
from tvlink.payment import accounts
from tvlink.payment.rules import applyMessage
from tvlink.platform.journal import PlatformJournal
from tvlink.store.ledgersqlite import SQLiteLedgerStore

PAN = "6222020000000000018"
SENDER = "PLATFORM"
DAY = "20261204"


def purchase(stan, when, amount):
    return {"mti": "0200", "proc": "000000", "sender": SENDER, "stan": stan, "time": when, "pan": PAN,
            "amount": "%012d" % (amount,), "currency": "156"}


def refund(stan, when, amount, orig):
    return {"mti": "0220", "proc": "200000", "sender": SENDER, "stan": stan, "time": when, "pan": PAN,
            "amount": "%012d" % (amount,), "currency": "156",
            "orig": {"mti": "0200", "sender": SENDER, "stan": orig[0], "time": orig[1]}}


def reversal(stan, when, orig):
    return {"mti": "0420", "sender": SENDER, "stan": stan, "time": when,
            "orig": {"mti": "0200", "sender": SENDER, "stan": orig[0], "time": orig[1]}}


class LayoutTests(SynchronousTestCase):
    rows = [
        {"sender": SENDER, "stan": "000001", "time": "1204101500", "mti": "0200", "proc": "000000", "pan": PAN,
         "amount": 1500, "resp": "00", "state": "refunded", "refunded": 500},
        {"sender": SENDER, "stan": "000002", "time": "1204101600", "mti": "0220", "proc": "200000", "pan": PAN,
         "amount": 500, "resp": "00", "state": "approved", "refunded": 0},
        {"sender": SENDER, "stan": "000003", "time": "1204101700", "mti": "0200", "proc": "000000", "pan": PAN,
         "amount": 2000, "resp": "00", "state": "reversed", "refunded": 0},
    ]

    def test_roundTrip(self):
        """
        Every line has its record's fixed width; the card is masked; the
        trailer counts and sums what the details hold.
        """
        text = reconcile.renderFile(DAY, SENDER, self.rows, "PAYMENT", "20261205000200", "23:30")
        lines = text.splitlines()
        self.assertEqual([len(l) for l in lines], [51, 84, 84, 84, 98])
        self.assertNotIn(PAN, text)
        self.assertIn("622202*********0018", lines[1])
        self.assertEqual(lines[1], "DPLATFORM   00000112041015000200000000622202*********001800000000150000F000000000500")
        header, details, trailer = reconcile.readFile(text)
        self.assertEqual((header["date"], header["sender"], header["cutover"]), (DAY, SENDER, "233000"))
        self.assertEqual([d["state"] for d in details], ["F", "A", "R"])
        self.assertEqual(
            {k: trailer[k] for k in ("count", "purchases", "purchaseAmount", "refunds", "refundAmount", "reversals",
                                     "reversedAmount", "netSign", "net")},
            {"count": 3, "purchases": 2, "purchaseAmount": 3500, "refunds": 1, "refundAmount": 500, "reversals": 1,
             "reversedAmount": 2000, "netSign": "+", "net": 1000},
        )

    def test_badFilesRefused(self):
        """
        A line of the wrong width, an unknown record, or a trailer that
        does not add up is refused naming the line.
        """
        text = reconcile.renderFile(DAY, SENDER, self.rows, "PAYMENT", "20261205000200")
        lines = text.splitlines()
        for broken, words in (
            ([lines[0], lines[1] + " ", lines[-1]], "line 2"),
            ([lines[0], "X" + lines[1][1:], lines[-1]], "unknown record type"),
            ([lines[0], lines[1], lines[-1]], "trailer count"),
            (lines[1:], "the header"),
            ([lines[0], lines[1][:57] + "000000001501" + lines[1][69:]] + lines[2:], "purchaseAmount"),
        ):
            e = self.assertRaises(reconcile.BadReconciliationFile, reconcile.readFile, "\n".join(broken) + "\n")
            self.assertIn(words, str(e))

    def test_writtenDurably(self):
        """
        A file written atomically is synced, and so is the directory entry
        it was renamed to.
        """
        synced = recordSyncs(self)
        folder = tempRoot(self)
        path = os.path.join(folder, "RC%s.txt" % (DAY,))
        reconcile.writeAtomically(path, reconcile.renderFile(DAY, SENDER, self.rows, "PAYMENT", "20261205000200"))
        self.assertEqual(os.listdir(folder), ["RC%s.txt" % (DAY,)])
        self.assertEqual(synced, [os.stat(path).st_ino, os.stat(folder).st_ino])

    def test_senderTooLongForTheLayout(self):
        self.assertRaises(ValueError, reconcile.renderFile, DAY, "S" * 12, [], "PAYMENT", "20261205000200")


class DayTests(SynchronousTestCase):
    def test_midnight(self):
        self.assertEqual(reconcile.dayWindows("20261204"), [("1204000000", "1205000000")])

    def test_cutover(self):
        """
        With a cut-over the day begins at the cut-over of the day before.
        """
        self.assertEqual(reconcile.dayWindows("20261204", "23:30"), [("1203233000", "1204233000")])

    def test_newYear(self):
        """
        The times carry no year: a day across the new year is two ranges.
        """
        self.assertEqual(
            reconcile.dayWindows("20270101", "22:00"), [("1231220000", "9999999999"), ("0000000000", "0101220000")]
        )
        self.assertEqual(reconcile.dayWindows("20261231"), [("1231000000", "9999999999"), ("0000000000", "0101000000")])

    def test_badCutover(self):
        for text in ("24:00", "12:60", "noon", "1", None):
            self.assertRaises(ValueError, reconcile.parseCutover, text)

    def test_dayEnding(self):
        """
        The next day to end after an instant, and when its window ends.
        """
        utc = datetime.timezone.utc
        now = datetime.datetime(2026, 12, 4, 10, 0, tzinfo=utc).timestamp()
        self.assertEqual(dayEnding(now, "000000", utc), ("20261204", now + 14 * 3600))
        self.assertEqual(dayEnding(now, "233000", utc), ("20261204", now + 13.5 * 3600))
        self.assertEqual(dayEnding(now, "060000", utc), ("20261205", now + 20 * 3600))

    def test_dayEnded(self):
        """
        The day that ended last before an instant, and when it ended; the
        instant of a cut-over counts as after it.
        """
        utc = datetime.timezone.utc
        now = datetime.datetime(2026, 12, 4, 10, 0, tzinfo=utc).timestamp()
        self.assertEqual(dayEnded(now, "000000", utc), ("20261203", now - 10 * 3600))
        self.assertEqual(dayEnded(now, "233000", utc), ("20261203", now - 10.5 * 3600))
        self.assertEqual(dayEnded(now, "060000", utc), ("20261204", now - 4 * 3600))
        self.assertEqual(dayEnded(now, "100000", utc), ("20261204", now))
        newYear = datetime.datetime(2027, 1, 1, 0, 1, tzinfo=utc).timestamp()
        self.assertEqual(dayEnded(newYear, "000000", utc), ("20261231", newYear - 60))


class Day:
    """
    One day of traffic on both sides, with one difference of each kind
    injected: a ledger file, a platform journal file, and their keys.
    """

    def __init__(self, case):
        self.root = tempRoot(case)
        self.ledgerPath = os.path.join(self.root, "ledger.db")
        self.journalPath = os.path.join(self.root, "journal.db")
        store = SQLiteLedgerStore.open(self.ledgerPath)
        self.store = store
        case.addCleanup(store.close)
        with store.transaction():
            accounts.openAccount(store, PAN, 1000000, "2026-12-04T00:00:00Z")
        # The platform writes its entries on the day (their created time
        # keeps another year's same date out of the day).
        self.clock = Clock()
        self.clock.advance(datetime.datetime(2026, 12, 4, 10, 0, tzinfo=datetime.timezone.utc).timestamp())
        self.journal = PlatformJournal("sqlite:" + self.journalPath, reactor=self.clock, threaded=False)
        case.addCleanup(self.journal.close)

    def payment(self, message, applied="2026-12-04T10:00:00Z"):
        with self.store.transaction():
            return applyMessage(self.store, message, applied).answer

    def platform(self, message, state):
        self.journal.record(message)
        self.journal.settle((message["sender"], message["stan"], message["time"]), state, "00")

    def both(self, message):
        answer = self.payment(message)
        self.platform(message, "approved" if answer["resp"] == "00" else "declined")
        return answer

    def inject(self):
        """
        The day: four transactions that agree, and one of each
        disagreement.
        """
        self.both(purchase("000001", "1204090000", 1000))
        self.both(purchase("000002", "1204091000", 3000))
        self.both(refund("000003", "1204092000", 1000, ("000002", "1204091000")))
        self.both(purchase("000004", "1204093000", 2000))
        self.payment(reversal("000005", "1204093100", ("000004", "1204093000")))
        self.journal.markReversed((SENDER, "000004", "1204093000"), "00")
        # Only on the payment side: the platform never journalled it.
        self.payment(purchase("000006", "1204100000", 700))
        # Only on the platform: the payment side never saw it.
        self.platform(purchase("000007", "1204110000", 800), "approved")
        # The amounts differ.
        self.both(purchase("000008", "1204120000", 900))
        conn = sqlite3.connect(self.journalPath)
        with conn:
            conn.execute("UPDATE entries SET amount = ? WHERE stan = '000008'", ("%012d" % (990,),))
        # The states differ: approved on the payment side, declined on the platform.
        self.payment(purchase("000009", "1204130000", 400))
        self.platform(purchase("000009", "1204130000", 400), "declined")
        conn.close()
        # Agreeing without a line: declined on both sides, and in doubt on
        # the platform for a request the payment side never saw.
        self.both(purchase("000010", "1204140000", 99999999))
        self.journal.record(purchase("000011", "1204150000", 100))
        # Another day, on both sides: in neither file nor comparison.
        self.both(purchase("000012", "1205090000", 100))
        self.both(purchase("000013", "1203235959", 100))
        # The same date a year before (a transmission time has no year),
        # on both sides: in neither either.
        self.clock.advance(-365 * 86400)
        self.platform(purchase("000014", "1204095000", 100), "approved")
        self.clock.advance(365 * 86400)
        self.payment(purchase("000014", "1204095000", 100), applied="2025-12-04T09:50:00Z")


class ReconciliationTests(SynchronousTestCase):
    def setUp(self):
        self.day = Day(self)
        self.file = os.path.join(self.day.root, "RC%s.txt" % (DAY,))

    def ledger(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        status = ledgercli.main(["--db", self.day.ledgerPath] + list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def reconcile(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        status = reconcilecli.main(["--journal", self.day.journalPath, "--file", self.file] + list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def test_eachDifferenceReported(self):
        """
        Over a day with one injected difference of each kind, the report
        holds exactly those differences, and matches the rest.
        """
        self.day.inject()
        status, out, err = self.ledger("reconcile-file", "--date", DAY, "--sender", SENDER, "--out", self.file)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("7 transactions", out)
        report = os.path.join(self.day.root, "report.json")
        status, out, err = self.reconcile("--json", report)
        self.assertEqual((status, err), (reconcilecli.DISAGREE, ""))
        with open(report) as f:
            rows = json.load(f)["rows"]
        got = sorted((r["kind"], r["key"].split("/")[1], ",".join(r["what"])) for r in rows)
        self.assertEqual(
            got,
            [
                ("differ", "000008", "amount"),
                ("differ", "000009", "state"),
                ("matched", "000001", ""),
                ("matched", "000002", ""),
                ("matched", "000003", ""),
                ("matched", "000004", ""),
                ("only on payment", "000006", ""),
                ("only on platform", "000007", ""),
            ],
        )
        self.assertIn("4 matched, 1 only on platform, 1 only on payment, 2 differ; 2 journal entries", out)
        lines = out.splitlines()
        self.assertTrue(lines[2].startswith("differ"), lines[2])
        self.assertNotIn(PAN, out)

    def test_agreeingDay(self):
        """
        A day on which both sides agree exits 0; the CSV copy lists the
        matched transactions.
        """
        self.day.both(purchase("000001", "1204090000", 1000))
        self.day.both(purchase("000002", "1204091000", 2000))
        self.assertEqual(self.ledger("reconcile-file", "--date", DAY, "--sender", SENDER, "--out", self.file)[0], 0)
        status, out, err = self.reconcile("--csv", "-")
        self.assertEqual(status, reconcilecli.AGREE)
        self.assertIn("kind,key,type,paymentAmount", out)
        self.assertEqual(out.count("matched,PLATFORM/"), 2)

    def test_lineTwiceReported(self):
        """
        A file holding one transaction twice (its trailer counting both)
        disagrees: the second line is only on the payment side, marked
        C{duplicate}, though the journal holds the key once.
        """
        self.day.both(purchase("000001", "1204090000", 1000))
        self.day.both(purchase("000002", "1204091000", 2000))
        rows = self.day.store.moneyMovedBetween("1204000000", "1205000000", SENDER)
        with open(self.file, "w") as f:
            f.write(reconcile.renderFile(DAY, SENDER, rows + rows[:1], "PAYMENT", "20261205000200"))
        status, out, err = self.reconcile("--json", "-")
        self.assertEqual((status, err), (reconcilecli.DISAGREE, ""))
        rows = json.loads(out[out.index("{"):])["rows"]
        got = sorted((r["kind"], r["key"].split("/")[1], ",".join(r["what"])) for r in rows)
        self.assertEqual(
            got,
            [("matched", "000001", ""), ("matched", "000002", ""), ("only on payment", "000001", "duplicate")],
        )
        self.assertIn("2 matched, 0 only on platform, 1 only on payment, 0 differ", out)

    def test_journalPathWithURICharacters(self):
        """
        A journal whose path holds C{?}, C{#} or C{%} is read where it is,
        read-only: nothing is made beside it.
        """
        import shutil

        self.day.both(purchase("000001", "1204090000", 1000))
        self.assertEqual(self.ledger("reconcile-file", "--date", DAY, "--sender", SENDER, "--out", self.file)[0], 0)
        self.day.journal.close()
        folder = os.path.join(self.day.root, "odd?dir#1")
        os.mkdir(folder)
        journal = os.path.join(folder, "journal%20.db")
        shutil.copy(self.day.journalPath, journal)

        def listed():
            # SQLite may add journal%20.db-wal and -shm beside a WAL file.
            return sorted(os.listdir(self.day.root)), [n for n in sorted(os.listdir(folder)) if n[:13] != "journal%20.db"]

        before = listed()
        out, err = io.StringIO(), io.StringIO()
        status = reconcilecli.main(["--journal", journal, "--file", self.file], out, err)
        self.assertEqual((status, err.getvalue()), (reconcilecli.AGREE, ""))
        self.assertIn("1 matched", out.getvalue())
        self.assertEqual(listed(), before)
        self.assertTrue(os.path.exists(journal))

    def test_fileToStandardOutputAndFilesDir(self):
        self.day.both(purchase("000001", "1204090000", 1000))
        status, out, err = self.ledger("reconcile-file", "--date", DAY, "--sender", SENDER)
        self.assertEqual(status, 0)
        self.assertEqual(len(reconcile.readFile(out)[1]), 1)
        files = os.path.join(self.day.root, "files")
        os.mkdir(files)
        status, out, err = self.ledger("reconcile-file", "--date", DAY, "--sender", SENDER, "--files-dir", files)
        self.assertEqual(status, 0)
        self.assertEqual(os.listdir(os.path.join(files, SENDER)), ["RC20261204.txt"])

    def test_badArguments(self):
        for argv, words in (
            (["--date", "2026-12-04", "--sender", SENDER], "YYYYMMDD"),
            (["--date", DAY, "--sender", "../x"], "sender"),
            (["--date", DAY, "--sender", SENDER, "--cutover", "25:00"], "cut-over"),
            (["--date", DAY, "--sender", "INSTITUTION12"], "room for 11"),
        ):
            status, out, err = self.ledger("reconcile-file", *argv)
            self.assertEqual(status, ledgercli.USAGE)
            self.assertIn(words, out + err)

    def test_unreadableFile(self):
        with open(self.file, "w") as f:
            f.write("not a reconciliation file\n")
        status, out, err = self.reconcile()
        self.assertEqual(status, reconcilecli.UNREADABLE)
        self.assertIn("a header and a trailer", err)
        os.remove(self.file)
        self.assertEqual(self.reconcile()[0], reconcilecli.UNREADABLE)


class StoreLedger:
    """
    The ledger's C{moneyMovedBetween} answered at once from a store.
    """

    def __init__(self, store):
        self.store = store

    def moneyMovedBetween(self, start, end, sender=None, applied=None):
        return succeed(self.store.moneyMovedBetween(start, end, sender, applied))


class DailyTests(SynchronousTestCase):
    def started(self, day, files, now, cutover):
        """
        A L{DailyReconciliation} of C{day}'s ledger into C{files}, started
        on a Clock at C{now} (a UTC C{datetime}), the day cut at
        C{cutover} UTC: C{(clock, daily)}.
        """
        clock = Clock()
        utc = datetime.timezone.utc
        clock.advance(now.replace(tzinfo=utc).timestamp())
        daily = DailyReconciliation(StoreLedger(day.store), FileStore(files), "PAYMENT", clock, cutover, 120, utc)
        daily.startService()
        self.addCleanup(daily.stopService)
        return clock, daily

    def test_writtenAfterTheCutover(self):
        """
        Each sender's file of the day is written into its directory the
        grace after the cut-over, and the next day is scheduled.
        """
        day = Day(self)
        day.both(purchase("000001", "1204090000", 1000))
        day.both(purchase("000002", "1204235000", 1000))
        files = os.path.join(day.root, "files")
        os.mkdir(files)
        clock, daily = self.started(day, files, datetime.datetime(2026, 12, 4, 12, 0), "23:30")
        clock.advance(11.5 * 3600 + 119)
        self.assertEqual(daily.written, [])
        clock.advance(1)
        path = os.path.join(files, SENDER, "RC20261204.txt")
        self.assertEqual(daily.written, [path])
        with open(path) as f:
            header, details, trailer = reconcile.readFile(f.read())
        self.assertEqual([d["stan"] for d in details], ["000001"])
        self.assertEqual(daily.nextDay, "20261205")
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_dayMissedWhileDownWritten(self):
        """
        A node that was not running at the last cut-over (or started
        within its grace) writes the files of that day it does not have
        yet, once the grace is over; a file already there is left as it is.
        """
        day = Day(self)
        day.both(purchase("000001", "1204090000", 1000))
        other = dict(purchase("000002", "1204091000", 500), sender="OTHER")
        day.payment(other)
        files = os.path.join(day.root, "files")
        os.mkdir(files)
        os.makedirs(os.path.join(files, "OTHER"))
        kept = os.path.join(files, "OTHER", "RC20261204.txt")
        with open(kept, "w") as f:
            f.write("written before\n")
        clock, daily = self.started(day, files, datetime.datetime(2026, 12, 5, 0, 1), "00:00")
        clock.advance(59)
        self.assertEqual(daily.written, [])
        clock.advance(1)
        path = os.path.join(files, SENDER, "RC20261204.txt")
        self.assertEqual(daily.written, [path])
        with open(path) as f:
            self.assertEqual([d["stan"] for d in reconcile.readFile(f.read())[1]], ["000001"])
        with open(kept) as f:
            self.assertEqual(f.read(), "written before\n")
        self.assertEqual(daily.nextDay, "20261205")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
