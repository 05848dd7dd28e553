"""
Tests for L{tvlink.cli.tap}: options and the services they build.
"""


from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tvlink import PaymentService, PlatformService
from tvlink.cli.sandbox import SandboxService
from tvlink.cli.tap import Options, makeService
from tvlink.platform.cardvault import CardVault


def parse(*argv):
    config = Options()
    config.parseOptions(list(argv))
    return config


class GarbageCollectionTests(SynchronousTestCase):
    def test_startUpIsFrozen(self):
        """
        Once the reactor runs, what start-up made is frozen out of the
        collector's scans and the young generation is collected less
        often.
        """
        import gc

        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        reactor = MemoryReactorClock()
        makeService(parse("payment", "--listen", "tcp:0"), reactor=reactor)
        self.assertEqual(gc.get_threshold(), before)
        # Only the collector's hook: the others take the signals over.
        [settle] = [call for call, args, kwargs in reactor.whenRunningHooks if call.__name__ == "settle"]
        settle()
        self.assertEqual(gc.get_threshold(), (10000, 10, 10))
        self.assertGreater(gc.get_freeze_count(), 0)


class OptionsTests(SynchronousTestCase):
    def test_payment(self):
        config = parse("payment", "--listen", "tcp:0", "--heartbeat", "0.5", "--idle-timeout", "2.5", "--header", "bin2")
        service = makeService(config, reactor=MemoryReactorClock())
        self.assertIsInstance(service, PaymentService)
        self.assertEqual(service.settings.heartbeat, 0.5)
        self.assertEqual(service.settings.idle_timeout, 2.5)
        self.assertEqual(service.settings.header.name, "bin2")
        self.assertEqual(service.settings.sender, "PAYMENT")

    def test_platform(self):
        config = parse(
            "platform", "--connect", "127.0.0.1:7000", "--connect", "127.0.0.2:7001", "--timeout", "12", "--sender", "TV01"
        )
        service = makeService(config, reactor=MemoryReactorClock())
        self.assertIsInstance(service, PlatformService)
        self.assertEqual(service.endpoints, [("127.0.0.1", 7000), ("127.0.0.2", 7001)])
        self.assertEqual(service.settings.timeout, 12)
        self.assertEqual(service.settings.sender, "TV01")

    def test_platform_pool(self):
        config = parse(
            "platform",
            "--connect", "127.0.0.1:7000,127.0.0.1:7001",
            "--connect", "127.0.0.2:7002",
            "--links-per-endpoint", "2",
            "--balance", "primary",
            "--max-queued", "10",
            "--eject-after", "3",
            "--cooldown", "2.5",
            "--ramp", "4",
        )
        service = makeService(config, reactor=MemoryReactorClock())
        self.assertEqual([f.group for f in service.factories], [0, 0, 0, 0, 1, 1])
        self.assertEqual(service.balancer.name, "primary")
        self.assertEqual(service.queue.limit, 10)
        self.assertEqual(service.factories[0].breaker.eject_after, 3)
        self.assertEqual(service.factories[0].breaker.cooldown, 2.5)
        self.assertEqual(service.factories[0].breaker.ramp, 4)

    def test_platform_journal(self):
        path = self.mktemp()
        config = parse("platform", "--connect", "h:1", "--journal", "sqlite:" + path, "--terminal-deadline", "90", "--timeout", "70")
        service = makeService(config, reactor=MemoryReactorClock())
        self.assertEqual(service._journalOption, "sqlite:" + path)
        self.assertEqual(service.terminal_deadline, 90)

    def test_platform_journal_on_postgresql(self):
        url = "postgresql://tvlink@db.example:5432/journal"
        config = parse(
            "platform", "--connect", "h:1", "--journal", url, "--journal-owner", "plat1", "--journal-lease", "7.5"
        )
        service = makeService(config, reactor=MemoryReactorClock())
        self.assertEqual(service._journalOption, url)
        self.assertEqual(service._journalLease, ("plat1", 7.5))
        config = parse("payment", "--listen", "tcp:0", "--ledger", "postgresql://tvlink@db.example:5432/ledger")
        self.assertEqual(config.subOptions.ledger, ("postgresql", "postgresql://tvlink@db.example:5432/ledger"))

    def test_platform_card_key(self):
        import os

        from tests.platform.test_cardvault import keyFile

        key = os.urandom(32)
        path = keyFile(self, key)
        config = parse("platform", "--connect", "h:1", "--journal", "sqlite:" + self.mktemp(), "--card-key", path)
        service = makeService(config, reactor=MemoryReactorClock())
        self.assertEqual(service.vault.keyId, CardVault(key).keyId)
        service = makeService(parse("platform", "--connect", "h:1"), reactor=MemoryReactorClock())
        self.assertIsNone(service.vault)

    def test_platform_bad_card_key(self):
        from tests.platform.test_cardvault import keyFile

        loose = keyFile(self, mode=0o644)
        e = self.assertRaises(UsageError, parse, "platform", "--connect", "h:1", "--journal", self.mktemp(), "--card-key", loose)
        self.assertIn("--card-key", str(e))
        self.assertIn(loose, str(e))
        missing = self.mktemp()
        e = self.assertRaises(UsageError, parse, "platform", "--connect", "h:1", "--journal", self.mktemp(), "--card-key", missing)
        self.assertIn(missing, str(e))
        e = self.assertRaises(UsageError, parse, "platform", "--connect", "h:1", "--card-key", keyFile(self))
        self.assertIn("needs --journal", str(e))

    def test_sandbox(self):
        service = makeService(parse("sandbox", "--echo-interval", "5"), reactor=MemoryReactorClock())
        self.assertIsInstance(service, SandboxService)

    def test_bad_options_name_the_option(self):
        cases = [
            (("payment",), "--listen"),
            (("payment", "--listen", "tcp:0", "--heartbeat", "abc"), "--heartbeat"),
            (("payment", "--listen", "tcp:0", "--idle-timeout", "-1"), "--idle-timeout"),
            (("payment", "--listen", "tcp:0", "--header", "bogus"), "--header"),
            (("payment", "--listen", "tcp:0", "--max-frame", "0"), "--max-frame"),
            (("platform",), "--connect"),
            (("platform", "--connect", "nohost"), "--connect"),
            (("platform", "--connect", "h:1", "--timeout", "nan"), "--timeout"),
            (("platform", "--connect", "h:1", "--balance", "random"), "--balance"),
            (("platform", "--connect", "h:1", "--links-per-endpoint", "0"), "--links-per-endpoint"),
            (("platform", "--connect", "h:1", "--max-queued", "-1"), "--max-queued"),
            (("platform", "--connect", "h:1", "--cooldown", "0"), "--cooldown"),
            (("platform", "--connect", "h:1,nohost"), "--connect"),
            (("platform", "--connect", "h:1", "--timeout", "60"), "--terminal-deadline"),
            (("platform", "--connect", "h:1", "--journal", "sqlite:"), "--journal"),
            (("platform", "--connect", "h:1", "--journal", "/no/such/dir/j.db"), "--journal"),
            (("platform", "--connect", "h:1", "--journal", "postgresql://u@h:5432"), "--journal"),
            (("platform", "--connect", "h:1", "--journal-lease", "0"), "--journal-lease"),
            (("platform", "--connect", "h:1", "--journal-owner", " "), "--journal-owner"),
            (("payment", "--listen", "tcp:0", "--ledger", "postgresql://u@h:x/d"), "--ledger"),
            (("sandbox", "--port", "99999"), "--port"),
            (("sandbox", "--echo-interval", "x"), "--echo-interval"),
            ((), "payment"),
        ]
        for argv, name in cases:
            e = self.assertRaises(UsageError, parse, *argv)
            self.assertIn(name, str(e), argv)

    def test_plugin(self):
        from twisted.plugin import getPlugins
        from twisted.application.service import IServiceMaker
        import twisted.plugins

        names = [p.tapname for p in getPlugins(IServiceMaker, twisted.plugins)]
        self.assertIn("tvlink", names)
