"""
The platform journal on PostgreSQL, shared by several platform processes:
the same journal as on SQLite, one standing purchase per order whichever
process journals it, and leases: a process's unfinished entries are its
own while it renews its lease, and another takes them over once the lease
has run out. A real server is started for them (L{tests.pgcluster});
without one they are skipped, under CI they fail.
"""

import psycopg
from twisted.internet.defer import fail, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests import pgcluster
from tests.helpers import Events, PoolRig
from tests.platform.test_journal import OLD_SCHEMA, SilentThenDemo, purchase
from tests.processes import ReactorTestCase
from tvlink.errors import JournalUnavailable, OrderTaken
from tvlink.platform.journal import ADDED_COLUMNS, SCHEMA_VERSION, PlatformJournal
from tvlink.web.status import databaseStatus


def entry(stan, order=None, **fields):
    message = purchase(100, sender="PLATFORM", stan=stan, time="1204120000", **fields)
    if order is not None:
        message["order"] = order
    return message


class JournalTests(SynchronousTestCase):
    def setUp(self):
        self.url = pgcluster.newDatabase()

    def journal(self, clock=None, **options):
        journal = PlatformJournal(self.url, reactor=clock or Clock(), threaded=False, **options)
        self.addCleanup(journal.close)
        return journal

    def test_sameJournalOnPostgreSQL(self):
        """
        Entries are recorded, found by key and order, settled and counted
        as on SQLite; times keep their fractions (a double, not a float).
        """
        clock = Clock()
        clock.advance(1764849600.25)
        journal = self.journal(clock)
        self.successResultOf(journal.record(entry("000001", order="O1")))
        self.successResultOf(journal.record(entry("000002")))
        key = ("PLATFORM", "000001", "1204120000")
        self.assertEqual(self.successResultOf(journal.settle(key, "approved", "00")), 1)
        got = self.successResultOf(journal.get(key))
        self.assertEqual((got["state"], got["resp"], got["created"], got["owner"]), ("approved", "00", 1764849600.25, journal.owner))
        self.assertEqual([e["key"] for e in self.successResultOf(journal.byOrder("O1"))], [key])
        self.assertEqual(self.successResultOf(journal.counts()), {"approved": 1, "pending": 1})
        self.assertEqual(len(self.successResultOf(journal.unfinished())), 1)
        self.assertIn(":", journal.owner)

    def test_olderJournalMigrated(self):
        """
        A journal table made before the added columns gets them, and the
        schema version is recorded.
        """
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(OLD_SCHEMA.replace("REAL", "DOUBLE PRECISION"))
        journal = self.journal()
        self.assertEqual(journal.store.migrated, [name for name, kind in ADDED_COLUMNS])
        rows = self.successResultOf(journal.store.query("SELECT version FROM tvlink_schema WHERE component = 'journal'"))
        self.assertEqual(rows, [(SCHEMA_VERSION,)])
        self.assertEqual(self.journal().store.migrated, [])

    def test_oneStandingPurchasePerOrder(self):
        """
        A second process cannot journal a purchase of an order the first
        journalled; once the first was declined without being sent, the
        order may be tried again.
        """
        first, second = self.journal(owner="a"), self.journal(owner="b")
        self.successResultOf(first.record(entry("000001", order="O")))
        self.failureResultOf(second.record(entry("000002", order="O")), OrderTaken)
        refund = dict(entry("000003", order="O"), mti="0220", proc="200000")
        self.successResultOf(second.record(refund))
        key = ("PLATFORM", "000001", "1204120000")
        self.successResultOf(first.settle(key, "declined", "91", "no payment link is ready"))
        self.successResultOf(second.record(entry("000004", order="O")))
        self.failureResultOf(first.record(entry("000005", order="O")), OrderTaken)

    def test_leaseAndTakeover(self):
        """
        The unfinished entries of a process whose lease has run out are
        taken by exactly one other process; while it renews, nobody takes
        them.
        """
        clocks = [Clock(), Clock(), Clock()]
        a, b, c = (self.journal(clock, owner=name, lease=10) for clock, name in zip(clocks, "abc"))
        self.assertEqual(self.successResultOf(a.claim()), [])
        self.successResultOf(a.record(entry("000001")))
        self.successResultOf(a.record(entry("000002")))
        self.assertEqual([e["stan"] for e in self.successResultOf(a.claim())], ["000001", "000002"])
        for clock in clocks:
            clock.advance(9)
        self.assertEqual(self.successResultOf(b.claim(mine=False)), [])
        self.successResultOf(a.renewLease())
        for clock in clocks:
            clock.advance(9)
        self.assertEqual(self.successResultOf(b.claim(mine=False)), [])
        for clock in clocks:
            clock.advance(11)
        taken = self.successResultOf(b.claim(mine=False))
        self.assertEqual([(e["stan"], e["owner"], e["taken_from"]) for e in taken], [("000001", "b", "a"), ("000002", "b", "a")])
        self.assertEqual(self.successResultOf(c.claim(mine=False)), [])
        self.assertEqual(self.successResultOf(a.claim(mine=False)), [])


class TakeoverTests(SynchronousTestCase):
    def test_reversalTakenOverFromDeadProcess(self):
        """
        A platform process dies with a purchase in flight; another on the
        same journal takes the entry over once the lease runs out and
        reverses it.
        """
        url = pgcluster.newDatabase()
        handler = SilentThenDemo()
        options = dict(ports=(7001,), handlers=[handler], journalPath=url, timeout=5)
        first = PoolRig(journalOptions={"owner": "first", "lease": 3}, **options)
        handler.silent = True
        first.service.request(purchase(400)).addErrback(lambda f: None)
        first.flush()
        key = list(first.service.factories[0].link.pending.entries)[0]
        # The first process is gone: its clock stands still, nothing of it
        # renews its lease or answers.
        handler.silent = False
        events = Events(self)
        second = PoolRig(journalOptions={"owner": "second", "lease": 3}, **options)
        self.addCleanup(second.service.journal.close)
        self.addCleanup(first.service.journal.close)
        second.flush()
        self.assertEqual(self.successResultOf(second.service.outcome(key))["owner"], "first")
        second.advance(5)
        got = self.successResultOf(second.service.outcome(key))
        self.assertEqual((got["state"], got["owner"]), ("reversed", "second"))
        self.assertEqual(events.named("journal-takeover")[0]["owner"], "first")


class LostDatabaseTests(ReactorTestCase):
    """
    The journal's store on the real reactor, its server stopped and
    started again.
    """

    timeout = 60

    @inlineCallbacks
    def test_lostAndBack(self):
        """
        While the server is down, work fails (the request is not sent:
        C{ConnectionError}) and the store says the database is down; once it is back the store
        reconnects, and the status data and metrics say so.
        """
        journal = PlatformJournal(pgcluster.newDatabase())
        self.addCleanup(journal.close)
        yield journal.record(entry("000001"))
        server = pgcluster.cluster()
        yield deferToThread(server.stopServer)
        try:
            yield self.assertFailure(journal.record(entry("000002")), ConnectionError)
            self.assertFalse(journal.store.databaseUp)
            self.assertEqual(databaseStatus(journal.store)["up"], False)
        finally:
            yield deferToThread(server.startServer)
        yield journal.record(entry("000003"))
        self.assertTrue(journal.store.databaseUp)
        self.assertEqual(journal.store.reconnects, 1)
        counts = yield journal.counts()
        self.assertEqual(counts, {"pending": 2})

    @inlineCallbacks
    def test_restartedWhileIdle(self):
        """
        The server restarts while the journal's connection sits idle: the
        next work finds the connection gone before it began, connects
        again and is done, not failed.
        """
        journal = PlatformJournal(pgcluster.newDatabase())
        self.addCleanup(journal.close)
        yield journal.record(entry("000001"))
        server = pgcluster.cluster()
        yield deferToThread(server.stopServer)
        yield deferToThread(server.startServer)
        yield journal.record(entry("000002"))
        self.assertEqual(journal.store.reconnects, 1)
        self.assertTrue(journal.store.databaseUp)


class DeadlockTests(SynchronousTestCase):
    def test_deadlockedBatchRunAgain(self):
        """
        A journal batch rolled back for a deadlock with another process is
        run again whole; its work is done once.
        """
        journal = PlatformJournal(pgcluster.newDatabase(), reactor=Clock(), threaded=False)
        self.addCleanup(journal.close)
        deadlocks = []

        def deadlockOnce(conn):
            conn.execute("INSERT INTO owners (name, lease_until) VALUES ('x', 1)")
            if not deadlocks:
                deadlocks.append(True)
                raise psycopg.errors.DeadlockDetected("deadlock detected (a test's)")
            return "done"

        self.assertEqual(self.successResultOf(journal.store.submit(deadlockOnce)), "done")
        self.assertEqual(journal.store.retriedBatches, 1)
        rows = self.successResultOf(journal.store.query("SELECT name FROM owners"))
        self.assertEqual(rows, [("x",)])


class UnreachableJournalTests(SynchronousTestCase):
    def test_requestNotSent(self):
        """
        A purchase whose journal entry cannot be written because the
        database is unreachable fails with L{JournalUnavailable} and is not
        sent.
        """
        handler = SilentThenDemo()
        rig = PoolRig(ports=(7001,), handlers=[handler], journalPath=self.mktemp(), timeout=5)
        self.addCleanup(rig.service.journal.close)
        self.patch(rig.service.journal, "record", lambda message, terminal=None, newOrder=False: fail(ConnectionError("unreachable")))
        failure = self.failureResultOf(rig.service.request(purchase(400)), JournalUnavailable)
        self.assertIn("was not sent: unreachable", str(failure.value))
        rig.flush()
        self.assertEqual(handler.spent, {})
