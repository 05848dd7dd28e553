"""
Beyond one machine, with real processes on 127.0.0.1 and a real
PostgreSQL server (L{tests.pgcluster}; skipped without one, a failure
under CI):

 - one platform and three payment nodes (C{twistd tvlink payment}) on one
   PostgreSQL ledger: thousands of purchases on five accounts that cannot
   all be paid, one node killed with SIGKILL part-way and restarted; every
   balance reconciles, no key is applied twice, no account goes below
   zero, and C{tvlink ledger check} is clean;
 - two platform processes (C{twistd tvlink platform --http}) on one
   PostgreSQL journal, the same orders posted to both at once through the
   terminal API: each order is charged once, and both callers get its
   outcome.

    payment x3  twistd -n tvlink payment --ledger postgresql://...   (children)
    platform    python -m tests.moneydriver --connect ... x3         (child)

C{TVLINK_SCALEOUT_TRANSACTIONS} (default 3300) sets the first test's size.
"""

import json
import os
import shutil
import sys
import tempfile

from twisted.internet import defer

from tests import pgcluster
from tests.processes import (
    ReactorTestCase,
    getReactor,
    pause,
    runTwistd,
    spawnPython,
    spawnTwistd,
    startPayment,
    waitUntil,
)
from tests.system.test_money_fault import journalled, reachedQuota, verify
from tests.webkit import fetch, freePort

TRANSACTIONS = int(os.environ.get("TVLINK_SCALEOUT_TRANSACTIONS", "3300"))

#: Five cards, told apart by their last four digits (the platform journal
#: keeps them masked), and far too little money for every purchase.
CARDS = ["622202000000000%04d" % (n,) for n in (11, 22, 33, 44, 55)]
OPENING = {pan: 40000 for pan in CARDS}
FAST = ("--heartbeat", "0.5", "--idle-timeout", "3")


def ledgerConnection(url):
    import psycopg

    return psycopg.connect(url, autocommit=True)


@defer.inlineCallbacks
def sharedStores(testCase, balance):
    """
    A fresh PostgreSQL ledger, made by C{tvlink ledger init}, with
    C{balance} on the first card; a fresh PostgreSQL journal; and a
    folder for the processes, removed when C{testCase} ends.

    @return: C{(ledger URL, journal URL, folder)}.
    """
    ledger, journal = pgcluster.newDatabase(), pgcluster.newDatabase()
    folder = tempfile.mkdtemp(prefix="tvlink-scaleout-")
    testCase.addCleanup(shutil.rmtree, folder, True)
    for argv in (["init"], ["open", CARDS[0], str(balance)]):
        child = spawnPython(testCase, ["-m", "tvlink", "ledger", "--db", ledger] + argv, "tvlink ledger", folder)
        testCase.assertEqual((yield child.whenEnded(30)), 0, child.tail())
    return ledger, journal, folder


class LedgerNodesTests(ReactorTestCase):
    timeout = 240

    def setUp(self):
        self.url = pgcluster.newDatabase()
        self.dir = tempfile.mkdtemp(prefix="tvlink-scaleout-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    @defer.inlineCallbacks
    def admin(self, *argv):
        child = spawnPython(self, ["-m", "tvlink", "ledger", "--db", self.url] + list(argv), "tvlink ledger", self.dir)
        status = yield child.whenEnded(30)
        return status, child

    @defer.inlineCallbacks
    def openAccounts(self):
        for _ in range(2):
            # init is safe to run twice.
            status, child = yield self.admin("init")
            self.assertEqual(status, 0, child.tail())
        children = [
            spawnPython(
                self, ["-m", "tvlink", "ledger", "--db", self.url, "open", pan, str(OPENING[pan])], "open", self.dir
            )
            for pan in CARDS
        ]
        for child in children:
            self.assertEqual((yield child.whenEnded(30)), 0, child.tail())

    def startNode(self, n, port=0):
        return startPayment(
            self, "--ledger", self.url, "--sender", "PAY%d" % (n,), *FAST, port=port, name="payment %d" % (n,), seconds=20
        )

    @defer.inlineCallbacks
    def test_threeNodesOneLedgerOneKilled(self):
        """
        3,000+ purchases spread over three payment nodes on one ledger, one
        node killed and restarted part-way: the money is right.
        """
        yield self.openAccounts()
        nodes = []
        for n in range(3):
            node, port = yield self.startNode(n)
            nodes.append([node, port])
        journal = os.path.join(self.dir, "journal.db")
        argv = ["-m", "tests.moneydriver", "--journal", journal]
        for node, port in nodes:
            argv += ["--connect", "127.0.0.1:%d" % (port,)]
        argv += [
            "--cards", ",".join(CARDS), "--quota", str(TRANSACTIONS), "--in-flight", "16",
            "--refund-share", "0.05", "--timeout", "2", "--terminal-deadline", "4", "--heartbeat", "0.5",
            "--idle-timeout", "3", "--settle-timeout", "60", "--run-timeout", "150",
            "--log", os.path.join(self.dir, "platform.log"),
        ]
        driver = spawnPython(self, argv, "platform", self.dir)
        yield driver.waitFor(r"^MONEYDRIVER READY", 30)
        yield waitUntil(reachedQuota(driver, TRANSACTIONS // 3), 120, "a third of the purchases")
        killed, port = nodes[1]
        killed.signal("KILL")
        self.assertEqual((yield killed.whenEnded(10)), -9, killed.tail())
        at = journalled(driver)
        yield pause(0.5)
        restarted, samePort = yield self.startNode(1, port=port)
        self.assertEqual(samePort, port)
        nodes[1][0] = restarted
        yield driver.whenEnded(200)
        self.assertEqual(driver.status, 0, driver.tail())
        summaries = [line for line in driver.stdout if line.startswith("MONEYDRIVER SUMMARY ")]
        summary = json.loads(summaries[-1][len("MONEYDRIVER SUMMARY "):])
        for node, port in nodes:
            yield node.stop()

        status, check = yield self.admin("check")
        self.assertEqual(status, 0, "\n".join(check.lines))
        self.assertIn("every account reconciles", "\n".join(check.stdout))
        report, problems = verify(journal, self.url, pans=CARDS, openingOf=OPENING, openLedger=ledgerConnection)
        sys.stdout.write(
            "\nthree nodes, one ledger: %d transactions (%d purchases) in %.1fs; node 1 killed at journalled=%d;"
            " states %s; declined by code %s; in doubt %d\n"
            % (
                report["transactions"], report["purchases"], summary["elapsed"], at,
                json.dumps(report["states"], sort_keys=True), json.dumps(report["declinedBy"], sort_keys=True),
                report["inDoubt"],
            )
        )
        self.assertEqual(problems, [], "\n".join(problems[:50]))
        self.assertEqual(summary["unfinished"], 0)
        self.assertGreaterEqual(report["purchases"], 3000)
        self.assertGreater(report["declinedBy"].get("51", 0), 0, "the accounts could pay for everything")
        with ledgerConnection(self.url) as conn:
            lowest = conn.execute("SELECT MIN(balance) FROM accounts").fetchone()[0]
        self.assertGreaterEqual(lowest, 0)
        self.assertGreater(at, 0)


class JournalProcessesTests(ReactorTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_sameOrdersAtTwoPlatformsChargedOnce(self):
        """
        The same orders posted to two platform processes on one journal at
        once: each is charged once, and both callers get its outcome.
        """
        ledger, journal, folder = yield sharedStores(self, 1000000)
        payment, port = yield startPayment(self, "--ledger", ledger, *FAST)
        webs = []
        for n in (1, 2):
            http = freePort()
            platform = spawnTwistd(
                self, "platform", "--connect", "127.0.0.1:%d" % (port,), "--http", "tcp:%d:interface=127.0.0.1" % (http,),
                "--journal", journal, "--journal-owner", "platform-%d" % (n,), "--sender", "PLATFORM%d" % (n,),
                *FAST, name="platform %d" % (n,),
            )
            yield platform.waitFor(r"link 127\.0\.0\.1:%d ready" % (port,), 20)
            webs.append("http://127.0.0.1:%d/v1/payments" % (http,))
        orders = ["order-%d" % (n,) for n in range(40)]
        replies = {}
        for start in range(0, len(orders), 10):
            calls = []
            for order in orders[start:start + 10]:
                for web in webs:
                    body = {"card": CARDS[0], "amount": 100, "order": order}
                    calls.append(fetch("POST", web, body).addCallback(lambda reply, order=order: (order, reply)))
            for order, (code, body) in (yield defer.gatherResults(calls)):
                replies.setdefault(order, []).append((code, body))
        for order in orders:
            (code1, body1), (code2, body2) = replies[order]
            self.assertEqual((code1, code2), (200, 200), replies[order])
            self.assertEqual((body1["state"], body2["state"]), ("approved", "approved"), replies[order])
            self.assertEqual(body1["reference"], body2["reference"], replies[order])
        with ledgerConnection(ledger) as conn:
            charged = conn.execute("SELECT COUNT(*), SUM(amount) FROM journal WHERE mti = '0200'").fetchone()
            balance = conn.execute("SELECT balance FROM accounts").fetchone()[0]
        self.assertEqual(tuple(charged), (len(orders), 100 * len(orders)))
        self.assertEqual(balance, 1000000 - 100 * len(orders))
        with ledgerConnection(journal) as conn:
            entries = conn.execute("SELECT COUNT(*), COUNT(DISTINCT order_id) FROM entries WHERE mti = '0200'").fetchone()
        self.assertEqual(tuple(entries), (len(orders), len(orders)))


class UnreachableTests(ReactorTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_unreachableAtStart(self):
        """
        A database that is not there at start: twistd exits non-zero with
        an error naming the URL, its password masked.
        """
        url = "postgresql://tvlink:s3cret@127.0.0.1:%d/ledger" % (freePort(),)
        for args in (
            ("payment", "--listen", "tcp:0:interface=127.0.0.1", "--ledger", url),
            ("platform", "--connect", "127.0.0.1:%d" % (freePort(),), "--journal", url),
        ):
            child = yield runTwistd(self, *args, seconds=30)
            said = "\n".join(child.lines)
            self.assertNotEqual(child.status, 0, said)
            self.assertIn("cannot connect to the database %s" % (url.replace(":s3cret", ":***"),), said)
            self.assertNotIn("s3cret", said)


class TakeoverTests(ReactorTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_killedPlatformsReversalTakenOver(self):
        """
        A platform process whose purchase is in doubt (the answer lost) is
        killed while it repeats the reversal; another platform process on
        the same journal takes the entry over once the lease has run out
        and finishes the reversal: the money is back, the entry reversed
        once.
        """
        from tvlink.testing.faultproxy import FaultProxy

        ledger, journal, folder = yield sharedStores(self, 10000)
        payment, port = yield startPayment(self, "--ledger", ledger, *FAST)
        proxy = FaultProxy("127.0.0.1", port, reactor=getReactor())
        yield proxy.start()
        self.addCleanup(proxy.stop)
        platforms, webs = [], []
        for name, target in (("first", proxy.port), ("second", port)):
            http = freePort()
            platform = spawnTwistd(
                self, "platform", "--connect", "127.0.0.1:%d" % (target,), "--http", "tcp:%d:interface=127.0.0.1" % (http,),
                "--journal", journal, "--journal-owner", name, "--journal-lease", "2", "--sender", name.upper(),
                "--timeout", "1", "--terminal-deadline", "3", *FAST, name="platform " + name,
            )
            yield platform.waitFor(r"link 127\.0\.0\.1:%d ready" % (target,), 20)
            platforms.append(platform)
            webs.append("http://127.0.0.1:%d/v1/payments" % (http,))
        # Answers from the payment node no longer reach the first process.
        proxy.setMode("blackhole", direction="down")
        code, body = yield fetch("POST", webs[0], {"card": CARDS[0], "amount": 700, "order": "lost-answer"})
        self.assertEqual((code, body["state"]), (504, "in-doubt"), body)
        yield platforms[0].waitFor(r"reversal of .* not acknowledged yet", 10)
        platforms[0].signal("KILL")
        yield platforms[0].whenEnded(10)
        yield platforms[1].waitFor(r"took over FIRST/\S+ from first", 15)
        with ledgerConnection(journal) as conn:

            def final():
                return conn.execute("SELECT state, owner FROM entries WHERE order_id = 'lost-answer'").fetchall()

            yield waitUntil(lambda: final() == [("reversed", "second")], 15, "the entry to be reversed by the second")
        with ledgerConnection(ledger) as conn:
            balance = conn.execute("SELECT balance FROM accounts").fetchone()[0]
            states = conn.execute("SELECT mti, state FROM journal ORDER BY id").fetchall()
        self.assertEqual(balance, 10000)
        self.assertEqual(states, [("0200", "reversed"), ("0420", "approved")])
