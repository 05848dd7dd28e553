"""
The file service of a real payment node (C{twistd tvlink payment
--files-listen ... --files-dir ...} over mutual TLS), reached by the
C{tvlink files} command in child processes and by
L{tvlink.PlatformService}'s file calls; and the C{--files-*} options.
"""

import os
import sys

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.certs import makeCertificates
from tests.files.kit import putFile, tempRoot
from tests.processes import ROOT, ReactorTestCase, spawnTwistd
from tests.webkit import fetch
from tvlink.cli import files as filescli
from tvlink.cli.tap import Options, makeService
from tvlink.platform.files import NoFileService
from tvlink.platform.service import PlatformService


def childEnv():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


class NodeTests(ReactorTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.root = tempRoot(self)
        self.files = os.path.join(self.root, "files")
        os.mkdir(self.files)
        # Under mutual TLS the node lets a client act only for the sender
        # its certificate names (--files-sender-check auto): PLATFORM's.
        self.certs = makeCertificates(os.path.join(self.root, "certs"), clientNames=("PLATFORM", "OTHER"))
        c = self.certs
        self.node = spawnTwistd(
            self, "payment", "--listen", "tcp:0:interface=127.0.0.1", "--ledger", "memory",
            "--tls-cert", c.server, "--tls-key", c.serverKey, "--tls-ca", c.ca,
            "--files-listen", "tcp:0:interface=127.0.0.1", "--files-dir", self.files, "--files-idle-timeout", "5",
            "--http", "tcp:0:interface=127.0.0.1",
            name="payment with files",
        )
        match = yield self.node.waitFor(r"files: serving .* on 127\.0\.0\.1:(\d+) over TLS", 15)
        self.port = int(match.group(1))
        match = yield self.node.waitFor(r"web listening on (http://127\.0\.0\.1:\d+/)", 15)
        self.web = match.group(1)

    def tvlinkFiles(self, *args, cert=True, name="PLATFORM"):
        c = self.certs
        tls = ["--tls-ca", c.ca] + (["--tls-cert", c.named[name][0], "--tls-key", c.named[name][1]] if cert else [])
        argv = ["-m", "tvlink", "files", args[0], "--connect", "127.0.0.1:%d" % (self.port,), "--sender", "PLATFORM"]
        return getProcessOutputAndValue(sys.executable, argv + tls + list(args[1:]), env=childEnv(), path=self.root)

    @defer.inlineCallbacks
    def test_commandExitStatuses(self):
        """
        put, list and get end 0 and the file comes back identical; a file
        that is not there ends 1, a name that is not plain 2, a client
        without a certificate 4.
        """
        data = os.urandom(700000)
        src = os.path.join(self.root, "src.bin")
        with open(src, "wb") as f:
            f.write(data)
        out, err, status = yield self.tvlinkFiles("put", src, "day.bin")
        self.assertEqual(status, 0, err)
        self.assertIn(b"sent day.bin: 700000 bytes", out)
        self.assertEqual(err, b"")
        out, err, status = yield self.tvlinkFiles("list")
        self.assertEqual(status, 0, err)
        self.assertIn(b"day.bin", out)
        self.assertIn(b"1 file", out)
        out, err, status = yield self.tvlinkFiles("get", "day.bin", "back.bin")
        self.assertEqual(status, 0, err)
        with open(os.path.join(self.root, "back.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        out, err, status = yield self.tvlinkFiles("get", "missing.bin", "x")
        self.assertEqual(status, filescli.REFUSED, err)
        self.assertIn(b"no file", err)
        out, err, status = yield self.tvlinkFiles("get", "../etc/passwd", "x")
        self.assertEqual(status, filescli.USAGE, err)
        out, err, status = yield self.tvlinkFiles("list", cert=False)
        self.assertEqual(status, filescli.CUT, err)
        yield self.node.waitFor(r"files: TLS with 127\.0\.0\.1:\d+ failed, connection refused", 5)
        self.assertTrue(self.node.find(r"refused get of missing\.bin from 127\.0\.0\.1:\d+ \(sender PLATFORM\)"))
        # The node's /metrics counts what its file service did.
        code, text = yield fetch("GET", self.web + "metrics")
        self.assertEqual(code, 200)
        for line in (
            'tvlink_files_bytes_total{direction="sent"} 700000.0',
            'tvlink_files_bytes_total{direction="received"} 700000.0',
            'tvlink_files_events_total{event="stored"} 1.0',
            'tvlink_files_events_total{event="sent"} 1.0',
            'tvlink_files_events_total{event="listed"} 1.0',
            'tvlink_files_events_total{event="tls-refused"} 1.0',
            'tvlink_files_refused_total{result="25"} 1.0',
            "tvlink_files_transfers 0.0",
        ):
            self.assertIn(line, text.splitlines())

    @defer.inlineCallbacks
    def test_certificateNamesTheSender(self):
        """
        Under mutual TLS another institution's certificate cannot list,
        fetch or replace PLATFORM's files; and no upload may take the name
        of a daily reconciliation file.
        """
        putFile(self.files, "PLATFORM", "RC20261204.txt", b"H...\n")
        for args in (("list",), ("get", "RC20261204.txt", "x"), ("put", __file__, "other.txt")):
            out, err, status = yield self.tvlinkFiles(*args, name="OTHER")
            self.assertEqual(status, filescli.REFUSED, (args, err))
            self.assertIn(b"names 'OTHER', not sender 'PLATFORM'", err)
        self.assertFalse(os.path.exists(os.path.join(self.files, "PLATFORM", "other.txt")))
        out, err, status = yield self.tvlinkFiles("put", __file__, "RC20261205.txt")
        self.assertEqual(status, filescli.REFUSED, err)
        self.assertIn(b"daily reconciliation file", err)

    @defer.inlineCallbacks
    def test_platformServiceCalls(self):
        """
        L{PlatformService.fetchFile}, C{sendFile} and C{listFiles} go over
        the platform's TLS options to its C{files_endpoint}.
        """
        c = self.certs
        platform = PlatformService(
            ["127.0.0.1:1"], files_endpoint="127.0.0.1:%d" % (self.port,),
            tls_cert=c.named["PLATFORM"][0], tls_key=c.named["PLATFORM"][1], tls_ca=c.ca,
        )
        putFile(self.files, "PLATFORM", "RC20261204.txt", b"H...\n")
        self.assertEqual([f["name"] for f in (yield platform.listFiles())], ["RC20261204.txt"])
        dest = os.path.join(self.root, "rc.txt")
        result = yield platform.fetchFile("RC20261204.txt", dest)
        self.assertEqual(result["size"], 5)
        result = yield platform.sendFile(dest, "copy.txt")
        with open(os.path.join(self.files, "PLATFORM", "copy.txt"), "rb") as f:
            self.assertEqual(f.read(), b"H...\n")


class OptionTests(SynchronousTestCase):
    def parse(self, *argv):
        config = Options()
        config.parseOptions(["payment", "--listen", "tcp:0", "--ledger", "memory"] + list(argv))
        return config

    def test_filesService(self):
        folder = tempRoot(self)
        config = self.parse(
            "--files-listen", "tcp:0:interface=127.0.0.1", "--files-dir", folder,
            "--files-max-transfers", "3", "--files-max-size", "1000", "--files-idle-timeout", "7",
        )
        service = makeService(config)
        factory = service.files.factory
        self.assertEqual((factory.max_transfers, factory.max_size, factory.idle), (3, 1000, 7.0))
        self.assertIs(service.service.role, service.role)

    def test_badOptions(self):
        folder = tempRoot(self)
        for argv, words in (
            (["--files-listen", "tcp:0"], "--files-dir"),
            (["--files-dir", folder], "--files-listen"),
            (["--files-listen", "tcp:0", "--files-dir", os.path.join(folder, "none")], "not a directory"),
            (["--files-listen", "nonsense:x", "--files-dir", folder], "--files-listen"),
            (["--files-listen", "tcp:0", "--files-dir", folder, "--files-max-transfers", "0"], "at least 1"),
            (["--files-listen", "tcp:0", "--files-dir", folder, "--day-cutover", "25:00"], "--day-cutover"),
            (["--files-listen", "tcp:0", "--files-dir", folder, "--files-idle-timeout", "-1"], "files-idle-timeout"),
            (["--files-listen", "tcp:0", "--files-dir", folder, "--files-sender-check", "ou"], "one of auto, none, cn"),
            (["--files-listen", "tcp:0", "--files-dir", folder, "--files-sender-check", "cn"], "needs --tls-ca"),
        ):
            e = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertIn(words, str(e))

    def test_platformWithoutFileService(self):
        platform = PlatformService(["127.0.0.1:1"])
        self.failureResultOf(platform.listFiles(), NoFileService)
        config = Options()
        config.parseOptions(["platform", "--connect", "127.0.0.1:1", "--files-connect", "127.0.0.1:7001"])
        self.assertEqual(makeService(config).filesEndpoint, "127.0.0.1:7001")
        self.assertRaises(usage.UsageError, Options().parseOptions, ["platform", "--connect", "127.0.0.1:1",
                                                                      "--files-connect", "nowhere"])
