"""
C{tvlink keys}, and the options that say who may call the terminal API and
how the HTTP side is limited.
"""

import io
import os

from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tests.webkit import tempdir
from tvlink.cli.httpopts import isLoopback
from tvlink.cli.keys import main
from tvlink.cli.tap import Options, makeService
from tvlink.web.keys import TerminalKeys


def keys(*argv):
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def parse(*argv):
    config = Options()
    config.parseOptions(list(argv))
    return config


class KeysCommandTests(SynchronousTestCase):
    def test_addListRevoke(self):
        """
        C{add} prints the key once (standard output, nothing else there)
        and the platform accepts it; C{list} shows the terminals without
        keys; C{revoke} removes one. Refusals exit 1 with the reason.
        """
        path = os.path.join(tempdir(self), "keys")
        status, out, err = keys("--file", path, "add", "tv-0001")
        self.assertEqual(status, 0, err)
        key = out.strip()
        self.assertTrue(key.startswith("tvk_tv-0001:"), key)
        self.assertIn("shown this once", err)
        self.assertEqual(TerminalKeys(path).terminalFor(b"Bearer " + key.encode()), "tv-0001")
        self.assertEqual(keys("--file", path, "add", "tv-0002")[0], 0)
        status, out, err = keys("--file", path, "list")
        self.assertEqual(status, 0)
        self.assertIn("tv-0001", out)
        self.assertIn("2 terminals", out)
        self.assertNotIn(key.split(":")[1], out + open(path).read())
        status, out, err = keys("--file", path, "add", "tv-0001")
        self.assertEqual(status, 1)
        self.assertIn("has a key already", err)
        self.assertEqual(keys("--file", path, "revoke", "tv-0001")[0], 0)
        self.assertIsNone(TerminalKeys(path).terminalFor(b"Bearer " + key.encode()))
        status, out, err = keys("--file", path, "revoke", "tv-0001")
        self.assertEqual(status, 1)
        self.assertIn("has no key", err)

    def test_refusals(self):
        folder = tempdir(self)
        status, out, err = keys("--file", os.path.join(folder, "none"), "list")
        self.assertEqual(status, 1)
        self.assertIn("no key file", err)
        status, out, err = keys("--file", os.path.join(folder, "k"), "add", "../etc")
        self.assertEqual(status, 1)
        self.assertIn("a terminal id is", err)
        self.assertEqual(keys("--file", os.path.join(folder, "k"))[0], 2)
        self.assertEqual(keys("list")[0], 2)
        self.assertFalse(os.path.exists(os.path.join(folder, "k")))


class AccessOptionTests(SynchronousTestCase):
    def test_isLoopback(self):
        for description, loopback in [
            ("tcp:8080:interface=127.0.0.1", True),
            ("tcp:8080:interface=127.0.0.2", True),
            ("tcp6:8080:interface=\\:\\:1", True),
            ("tcp6:8080:interface=\\:\\:", False),
            ("tcp:8080", False),
            ("tcp:8080:interface=0.0.0.0", False),
            ("tcp:8080:interface=10.1.2.3", False),
            ("ssl:8443:privateKey=k.pem:interface=127.0.0.1", True),
            ("ssl:8443:privateKey=k.pem", False),
            ("unix:/run/tvlink.sock", True),
        ]:
            self.assertEqual(isLoopback(description), loopback, description)

    def test_openAPIOffLoopbackIsRefused(self):
        """
        A terminal API on all interfaces without keys does not start; it
        does with C{--api-keys none} (on purpose) or with a key file.
        """
        e = self.assertRaises(UsageError, parse, "platform", "--connect", "127.0.0.1:7000", "--http", "tcp:8080")
        self.assertIn("--api-keys", str(e))
        config = parse("platform", "--connect", "127.0.0.1:7000", "--http", "tcp:8080", "--api-keys", "none")
        self.assertIsNone(config.subOptions.apiKeys)
        path = os.path.join(tempdir(self), "keys")
        keys("--file", path, "add", "tv-1")
        config = parse("platform", "--connect", "127.0.0.1:7000", "--http", "tcp:8080", "--api-keys", path)
        self.assertEqual(config.subOptions.apiKeys, path)
        e = self.assertRaises(
            UsageError, parse, "platform", "--connect", "127.0.0.1:7000", "--http", "8080", "--api-keys", path + "x"
        )
        self.assertIn("no key file", str(e))
        # The loopback platform and the sandbox stay open; the sandbox only on loopback.
        self.assertIsNone(parse("platform", "--connect", "127.0.0.1:7000", "--http", "8080").subOptions.apiKeys)
        e = self.assertRaises(UsageError, parse, "sandbox", "--http", "tcp:8080")
        self.assertIn("loopback", str(e))

    def test_httpLimits(self):
        """
        The C{--http-*} limits reach the site's front door; the connection
        cap defaults to what the descriptor budget leaves.
        """
        config = parse(
            "platform", "--connect", "127.0.0.1:7000", "--http", "8080", "--http-max-connections", "50",
            "--http-max-per-client", "5", "--http-head-timeout", "2.5", "--http-body-timeout", "3",
            "--http-idle-timeout", "7", "--http-allow-origin", "https://shop.example",
        )
        stack = makeService(config, reactor=MemoryReactorClock())
        door = stack.web.door
        self.assertEqual(
            (door.max_connections, door.max_per_client, door.head_timeout, door.body_timeout, door.idle_timeout),
            (50, 5, 2.5, 3.0, 7.0),
        )
        self.assertEqual(stack.web.api.access.origins.allowed, {b"https://shop.example"})
        stack = makeService(parse("payment", "--listen", "tcp:0", "--http", "8081"), reactor=MemoryReactorClock())
        self.assertGreaterEqual(stack.web.door.max_connections, 1)
        e = self.assertRaises(UsageError, parse, "platform", "--connect", "127.0.0.1:7000", "--http", "8080", "--api-rate", "5")
        self.assertIn("--api-keys", str(e))
        for bad in (
            ["--api-rate", "-1"],
            ["--api-rate", "x"],
            ["--api-max-calls", "0"],
            ["--http-max-connections", "0"],
            ["--http-max-per-client", "x"],
            ["--http-head-timeout", "-1"],
            ["--http-allow-origin", "shop.example"],
        ):
            e = self.assertRaises(UsageError, parse, "platform", "--connect", "127.0.0.1:7000", "--http", "8080", *bad)
            self.assertIn(bad[0], str(e))
