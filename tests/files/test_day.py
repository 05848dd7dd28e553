"""
One day end to end: a payment node (twistd, SQLite ledger, file service)
and a platform with a journal make real purchases and a refund over a
link; the payment side writes the day's reconciliation file, the
platform fetches it over the files port and checks it against its
journal; then a difference is injected and reported.
"""

import io
import json
import os
import sqlite3
import time

from twisted.internet import defer

from tests.files.kit import tempRoot
from tests.processes import ReactorTestCase, spawnTwistd, waitUntil, withDeadline
from tvlink.cli import ledger as ledgercli
from tvlink.cli import reconcile as reconcilecli
from tvlink.platform.service import PlatformService

PAN = "6222020000000000018"


def purchase(fen, order):
    return {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "%012d" % (fen,), "currency": "156", "order": order}


class DayTests(ReactorTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.root = tempRoot(self)
        self.ledger = os.path.join(self.root, "ledger.db")
        self.journal = os.path.join(self.root, "journal.db")
        self.files = os.path.join(self.root, "files")
        os.mkdir(self.files)
        for argv in (["init"], ["open", PAN, "100000"]):
            self.assertEqual(ledgercli.main(["--db", self.ledger] + argv, io.StringIO(), io.StringIO()), 0)
        node = spawnTwistd(
            self, "payment", "--listen", "tcp:0:interface=127.0.0.1", "--ledger", "sqlite:" + self.ledger,
            "--files-listen", "tcp:0:interface=127.0.0.1", "--files-dir", self.files, name="payment",
        )
        links = yield node.waitFor(r"payment listening on 127\.0\.0\.1:(\d+)", 15)
        files = yield node.waitFor(r"files: serving .* on 127\.0\.0\.1:(\d+)", 15)
        self.platform = PlatformService(
            ["127.0.0.1:%s" % (links.group(1),)], journal="sqlite:" + self.journal, connect_timeout=5,
            files_endpoint="127.0.0.1:%s" % (files.group(1),),
        )
        self.platform.startService()
        self.addCleanup(self.platform.stopService)
        yield withDeadline(self.platform.whenReady(), 10, "the platform to sign on")

    @defer.inlineCallbacks
    def settled(self, answer):
        """
        Wait until the journal has the final state of C{answer}'s request.
        """
        key = (answer["sender"], answer["stan"], answer["time"])
        states = []

        def final():
            self.platform.outcome(key).addCallback(lambda entry: states.append(entry and entry["state"]))
            return states and states[-1] in ("approved", "declined")

        yield waitUntil(final, 10, "the journal to settle %s" % ("/".join(key),))
        return key

    def reconcile(self, path, *argv):
        out, err = io.StringIO(), io.StringIO()
        status = reconcilecli.main(["--journal", self.journal, "--file", path] + list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_dayReconciles(self):
        keys = []
        for n, fen in enumerate((1000, 2000, 3000)):
            answer = yield self.platform.request(purchase(fen, "day-%d" % (n,)))
            self.assertEqual(answer["resp"], "00")
            keys.append((yield self.settled(answer)))
        first = keys[0]
        answer = yield self.platform.request(
            {"mti": "0220", "proc": "200000", "pan": PAN, "amount": "%012d" % (500,), "currency": "156",
             "orig": {"mti": "0200", "sender": first[0], "stan": first[1], "time": first[2]}}
        )
        self.assertEqual(answer["resp"], "00")
        keys.append((yield self.settled(answer)))
        day = "%04d%s" % (time.localtime().tm_year, first[2][:4])
        out, err = io.StringIO(), io.StringIO()
        status = ledgercli.main(
            ["--db", self.ledger, "reconcile-file", "--date", day, "--sender", "PLATFORM", "--files-dir", self.files],
            out, err,
        )
        self.assertEqual((status, err.getvalue()), (0, ""))
        listed = yield self.platform.listFiles()
        self.assertEqual([f["name"] for f in listed], ["RC%s.txt" % (day,)])
        local = os.path.join(self.root, "RC%s.txt" % (day,))
        yield self.platform.fetchFile("RC%s.txt" % (day,), local)
        status, out, err = self.reconcile(local)
        self.assertEqual(status, reconcilecli.AGREE, out + err)
        self.assertIn("4 matched, 0 only on platform, 0 only on payment, 0 differ", out)
        # The platform's journal loses the third purchase: only on payment.
        conn = sqlite3.connect(self.journal)
        with conn:
            conn.execute("DELETE FROM entries WHERE sender = ? AND stan = ? AND time = ?", keys[2])
        conn.close()
        report = os.path.join(self.root, "report.json")
        status, out, err = self.reconcile(local, "--json", report)
        self.assertEqual(status, reconcilecli.DISAGREE)
        with open(report) as f:
            rows = json.load(f)["rows"]
        self.assertEqual([r["key"] for r in rows if r["kind"] == "only on payment"], ["/".join(keys[2])])
        self.assertEqual(sum(1 for r in rows if r["kind"] == "matched"), 3)
