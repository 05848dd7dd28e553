"""
Interoperation with an ISO 8583 implementation tvlink did not write:
iso8583sim (its own encoder, parser and asyncio client and mock host, see
L{tests.system.iso8583sim_peer}) against real tvlink processes on
127.0.0.1, under C{--codec iso8583} and the ascii4 length header both
use.

    - iso8583sim's client signs on to a tvlink payment node on a SQLite
      ledger, buys, asks the balance, reverses the purchase and asks again;
    - a tvlink platform links to iso8583sim's mock host, signs on and
      echo-tests it, and a TV terminal's purchase through the platform's
      HTTP API is approved by that host.
"""

import json
import os
import shutil
import tempfile
from io import StringIO

from twisted.internet import defer

from tests.processes import ReactorTestCase, spawnPython, spawnTwistd, startPayment
from tests.webkit import fetch, freePort
from tvlink.cli import ledger as admin

try:
    import iso8583sim  # noqa: F401
except ImportError:  # pragma: no cover - the test extra installs it
    iso8583sim = None

PAN = "6222020000000000018"
OPENING = 100000
ACQUIRER = "10000001"
PEER = ["-m", "tests.system.iso8583sim_peer"]
ISO = ("--codec", "iso8583", "--header", "ascii4", "--sender", ACQUIRER)


def answers(child):
    """
    The peer client's answers, by step.
    """
    found = {}
    for line in child.stdout:
        if line.startswith("{"):
            answer = json.loads(line)
            found[answer["step"]] = answer
    return found


class InteropTests(ReactorTestCase):
    timeout = 60

    def setUp(self):
        if iso8583sim is None:
            self.skipTest("iso8583sim is not installed (pip install '.[test]')")
        self.folder = tempfile.mkdtemp(prefix="tvlink-interop-")
        self.addCleanup(shutil.rmtree, self.folder, True)

    def ledger(self):
        path = os.path.join(self.folder, "ledger.db")
        for argv in (["--db", path, "init"], ["--db", path, "open", PAN, str(OPENING)]):
            out, err = StringIO(), StringIO()
            self.assertEqual(admin.main(argv, out, err), 0, err.getvalue())
        return path

    @defer.inlineCallbacks
    def test_clientAgainstPayment(self):
        """
        iso8583sim's client, speaking ISO 8583 it encodes itself, signs on,
        buys 12.34, sees the balance fall by that much, reverses the
        purchase and sees the balance whole again; every answer echoes the
        request's STAN and carries response code 00.
        """
        path = self.ledger()
        payment, port = yield startPayment(self, "--ledger", "sqlite:" + path, *ISO)
        client = spawnPython(self, PEER + ["client", str(port)], "iso8583sim client")
        yield client.whenEnded(30)
        self.assertEqual(client.status, 0, client.tail())
        got = answers(client)
        self.assertEqual(
            sorted(got), ["balance", "balance-after", "purchase", "reversal", "sign-on"], client.tail()
        )
        self.assertEqual(got["sign-on"]["mti"], "0810")
        self.assertEqual(got["purchase"]["mti"], "0210")
        self.assertEqual(got["reversal"]["mti"], "0430")
        for step, stan in [("sign-on", "000001"), ("purchase", "000002"), ("balance", "000003"),
                           ("reversal", "000004"), ("balance-after", "000005")]:
            self.assertEqual(got[step]["fields"]["39"], "00", (step, got[step]))
            self.assertEqual(got[step]["fields"]["11"], stan, (step, got[step]))
        # Field 54, additional amounts, one 20-character amount as ISO 8583
        # lays it out: account type 00, amount type 02 (available
        # balance), currency 156, C (credit), 12 digits of fen.
        self.assertEqual(got["balance"]["fields"]["54"], "0002156C%012d" % (OPENING - 1234,))
        self.assertEqual(got["balance-after"]["fields"]["54"], "0002156C%012d" % (OPENING,))
        # The ledger recorded the purchase and its reversal, nothing else.
        out, err = StringIO(), StringIO()
        self.assertEqual(admin.main(["--db", path, "show", PAN], out, err), 0, err.getvalue())
        self.assertIn("1000.00", out.getvalue())

    @defer.inlineCallbacks
    def test_platformAgainstHost(self):
        """
        A tvlink platform signs on to iso8583sim's mock host and has a TV
        terminal's purchase approved by it; the answer comes back to the
        terminal approved, with the card masked.
        """
        host = spawnPython(self, PEER + ["host"], "iso8583sim host")
        match = yield host.waitFor(r"host listening on (\d+)", 15)
        hostPort = int(match.group(1))
        http = freePort()
        platform = spawnTwistd(
            self,
            "platform",
            "--connect", "127.0.0.1:%d" % (hostPort,),
            "--http", "tcp:%d:interface=127.0.0.1" % (http,),
            "--journal", os.path.join(self.folder, "journal.db"),
            *ISO,
            name="platform",
        )
        yield platform.waitFor(r"link 127\.0\.0\.1:%d ready" % (hostPort,), 15)
        status, body = yield fetch(
            "POST",
            "http://127.0.0.1:%d/v1/payments" % (http,),
            {"card": PAN, "amount": 1234, "order": "interop-1"},
        )
        self.assertEqual(status, 200, body)
        self.assertEqual(body["state"], "approved", body)
        self.assertEqual(body["resp"], "00", body)
        self.assertNotIn(PAN, json.dumps(body))
