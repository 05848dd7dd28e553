"""
Transfers over real loopback TCP and TLS: the file service and its
client in this process on the real reactor, a fault proxy to cut
connections part-way, and a bare ascii4 client with no tvlink code in it
for what the tvlink client would never send.
"""

import hashlib
import io
import os

from twisted.internet import defer

from tests.certs import makeCertificates
from tests.files.kit import Events, putFile, sha, tempRoot
from tests.processes import ReactorTestCase, connectRaw, getReactor, waitUntil
from tvlink.cli import files as filescli
from tvlink.files import protocol as fp
from tvlink.files.client import FileClient
from tvlink.files.service import FileService
from tvlink.link.settings import LinkSettings
from tvlink.link.tls import ClientTLS, ServerTLS
from tvlink.testing.faultproxy import FaultProxy

SENDER = "PLAT01"
OTHER = "PLAT02"

#: The size of the files sent: a few megabytes, many frames.
SIZE = 3 * 1024 * 1024 + 17


class Transfers:
    """
    The transfer tests both transports run; a L{ReactorTestCase} mixes
    them in with C{tls} and C{header} set.
    """

    tls = False
    header = "ascii4"

    def setUp(self):
        self.root = tempRoot(self)
        self.files = os.path.join(self.root, "files")
        os.mkdir(self.files)
        self.events = Events(self)
        self.serverTLS = self.clientTLS = None
        if self.tls:
            certs = makeCertificates(os.path.join(self.root, "certs"), clientNames=(SENDER,))
            self.certs = certs
            self.serverTLS = ServerTLS(certs.server, certs.serverKey, certs.ca)
            self.clientTLS = ClientTLS(certs.client, certs.clientKey, certs.ca)
        self.service = self.startService()

    def startService(self, **limits):
        """
        A file service on a free loopback port, stopped in cleanup.
        """
        settings = LinkSettings(reactor=getReactor(), header=self.header)
        service = FileService("tcp:0:interface=127.0.0.1", self.files, settings, tls=self.serverTLS, **limits)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def client(self, sender=SENDER, port=None, tls="default"):
        settings = LinkSettings(reactor=getReactor(), header=self.header, sender=sender)
        return FileClient(
            "127.0.0.1",
            port or self.service.port.getHost().port,
            sender,
            tls=self.clientTLS if tls == "default" else tls,
            settings=settings,
            idle=5.0,
            total=20.0,
        )

    def local(self, name, data=None):
        path = os.path.join(self.root, name)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        return path

    def proxy(self):
        proxy = FaultProxy("127.0.0.1", self.service.port.getHost().port, reactor=getReactor())
        self.addCleanup(proxy.stop)
        return proxy.start().addCallback(lambda port: proxy)

    @staticmethod
    def cutAt(proxy, share):
        """
        A progress callback that resets the proxied connection once
        C{share} of the file has passed.
        """
        cut = []

        def progress(done, size):
            if not cut and done >= size * share:
                cut.append(done)
                proxy.setMode("reset")

        return progress, cut

    @defer.inlineCallbacks
    def test_downloadResumesAfterACut(self):
        """
        A download cut off part-way fails as cut; the next try resumes from
        the bytes already received and ends byte-identical, renamed into
        place only then.
        """
        data = os.urandom(SIZE)
        putFile(self.files, SENDER, "day.bin", data)
        proxy = yield self.proxy()
        dest = self.local("day.bin")
        progress, cut = self.cutAt(proxy, 0.4)
        client = self.client(port=proxy.port)
        yield self.assertFailure(client.get("day.bin", dest, progress), fp.ConnectionCut)
        self.assertTrue(cut)
        self.assertFalse(os.path.exists(dest))
        kept = os.path.getsize(dest + ".part")
        self.assertTrue(0 < kept < SIZE, kept)
        proxy.setMode("pass")
        result = yield client.get("day.bin", dest)
        self.assertEqual(result["resumed"], kept)
        with open(dest, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), sha(data))
        self.assertFalse(os.path.exists(dest + ".part"))
        self.assertFalse(os.path.exists(dest + ".part.json"))

    @defer.inlineCallbacks
    def test_uploadResumesAfterACut(self):
        """
        An upload cut off part-way leaves the server its partial file
        (hidden from listings); the next try sends only the rest.
        """
        data = os.urandom(SIZE)
        src = self.local("up.bin", data)
        proxy = yield self.proxy()
        progress, cut = self.cutAt(proxy, 0.5)
        client = self.client(port=proxy.port)
        yield self.assertFailure(client.put(src, "up.bin", progress), fp.TransferError)
        yield waitUntil(lambda: self.events.named("cut"), 5, "the server to see the cut")
        proxy.setMode("pass")
        self.assertEqual((yield client.list()), [])
        result = yield client.put(src, "up.bin")
        self.assertGreater(result["resumed"], 0)
        with open(os.path.join(self.files, SENDER, "up.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(os.path.join(self.files, SENDER)), ["up.bin"])

    @defer.inlineCallbacks
    def test_corruptDownloadNotRenamed(self):
        """
        A file that changed on the server's disk under its recorded digest
        arrives with the wrong SHA-256: the client reports it corrupt and
        leaves neither the file nor a partial file.
        """
        data = os.urandom(200000)
        path = putFile(self.files, SENDER, "day.bin", data)
        client = self.client()
        yield client.get("day.bin", self.local("first.bin"))
        info = os.stat(path)
        with open(path, "r+b") as f:
            f.seek(100000)
            f.write(bytes([data[100000] ^ 0xFF]))
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
        dest = self.local("second.bin")
        yield self.assertFailure(client.get("day.bin", dest), fp.Corrupt)
        self.assertEqual([p for p in os.listdir(self.root) if p.startswith("second")], [])
        yield waitUntil(lambda: self.events.named("corrupt"), 5, "the server to log the corrupt download")

    @defer.inlineCallbacks
    def test_destinationNotWritable(self):
        """
        A download to a folder that does not exist fails with the local
        error, and the server sees the connection end.
        """
        putFile(self.files, SENDER, "day.bin", b"x" * 1000)
        yield self.assertFailure(
            self.client().get("day.bin", os.path.join(self.root, "none", "day.bin")), FileNotFoundError
        )

    @defer.inlineCallbacks
    def test_institutionsIsolated(self):
        """
        A second institution neither sees, reads nor overwrites the first
        one's files.
        """
        putFile(self.files, SENDER, "day.bin", b"first institution's file")
        other = self.client(OTHER)
        self.assertEqual((yield other.list()), [])
        failure = yield self.assertFailure(other.get("day.bin", self.local("stolen")), fp.Refused)
        self.assertEqual(failure.resp, fp.NOT_FOUND)
        yield other.put(self.local("mine", b"second's"), "day.bin")
        with open(os.path.join(self.files, SENDER, "day.bin"), "rb") as f:
            self.assertEqual(f.read(), b"first institution's file")
        self.assertEqual([f["name"] for f in (yield self.client(SENDER).list())], ["day.bin"])

class PlainTransferTests(Transfers, ReactorTestCase):
    """
    The transfers over plain TCP, ascii4 frames, and what a bare ascii4
    client sends that the tvlink client would not.
    """

    @defer.inlineCallbacks
    def test_corruptUploadNotRenamed(self):
        """
        Data that does not match the announced SHA-256 is answered E1 and
        never stored.
        """
        raw = yield connectRaw(self, self.service.port.getHost().port)
        raw.sendMessage({"op": "put", "sender": SENDER, "name": "up.bin", "size": "5", "sha256": sha(b"hello")})
        raw.sendFrame(b"jello")
        yield raw.whenLost(5)
        answers = []
        for _ in range(2):
            answers.append((yield raw.nextMessage()))
        self.assertEqual([(a["op"], a["resp"]) for a in answers], [("ready", "00"), ("stored", fp.CORRUPT)])
        self.assertFalse(os.path.exists(os.path.join(self.files, SENDER, "up.bin")))
        self.assertEqual(os.listdir(os.path.join(self.files, SENDER)), [])
        self.assertEqual(len(self.events.named("corrupt")), 1)

    @defer.inlineCallbacks
    def test_stalledPeerDroppedWhileAnotherTransfers(self):
        """
        A peer that asks for an upload and then sends nothing is dropped at
        the idle timeout; a download running meanwhile completes.
        """
        yield self.service.stopService()
        self.service = self.startService(idle=1.0)
        data = os.urandom(SIZE)
        putFile(self.files, SENDER, "day.bin", data)
        raw = yield connectRaw(self, self.service.port.getHost().port)
        raw.sendMessage({"op": "put", "sender": SENDER, "name": "slow.bin", "size": "1000", "sha256": sha(b"")})
        started = getReactor().seconds()
        result = yield self.client().get("day.bin", self.local("day.bin"))
        self.assertEqual(result["sha256"], sha(data))
        yield raw.whenLost(5, "the stalled peer to be dropped")
        self.assertGreaterEqual(getReactor().seconds() - started, 0.9)
        yield waitUntil(lambda: self.events.named("timeout"), 5, "the timeout to be logged")
        self.assertEqual(self.events.named("timeout")[0]["why"], "idle for 1s")
        yield waitUntil(lambda: self.service.factory.active == 0, 5, "the transfer slots to be free")


    @defer.inlineCallbacks
    def test_traversalRefusedOverTheWire(self):
        """
        Over real TCP, every name or sender that would lead out of the
        sender's directory is refused C{12} with a reason, logged with the
        peer, and nothing outside is read or written.
        """
        putFile(self.files, OTHER, "secret.txt", b"other institution")
        with open(os.path.join(self.root, "outside.txt"), "wb") as f:
            f.write(b"outside the files root")
        os.makedirs(os.path.join(self.files, SENDER))
        os.symlink(os.path.join(self.root, "outside.txt"), os.path.join(self.files, SENDER, "out.txt"))
        os.symlink(os.path.join(self.files, OTHER), os.path.join(self.files, "ALIAS"))
        requests = [{"op": "get", "sender": SENDER, "name": name} for name in (
            "../PLAT02/secret.txt", "../../outside.txt", "/etc/passwd", "..", "sub/x", "out.txt", "nul\x00", "\u202egnp.exe",
        )] + [
            {"op": "list", "sender": "../PLAT02"},
            {"op": "list", "sender": "ALIAS"},
            {"op": "put", "sender": SENDER, "name": "../PLAT02/secret.txt", "size": "1", "sha256": sha(b"x")},
            {"op": "put", "sender": SENDER, "name": "out.txt/x", "size": "1", "sha256": sha(b"x")},
        ]
        port = self.service.port.getHost().port
        for request in requests:
            raw = yield connectRaw(self, port)
            raw.sendMessage(request)
            answer = yield raw.nextMessage()
            self.assertEqual((answer["op"], answer["resp"]), ("refused", fp.NOT_ALLOWED), request)
            self.assertTrue(answer["reason"])
            yield raw.whenLost(5)
        refused = self.events.named("refused")
        self.assertEqual(len(refused), len(requests))
        self.assertTrue(all(e["peer"].startswith("127.0.0.1:") for e in refused))
        with open(os.path.join(self.files, OTHER, "secret.txt"), "rb") as f:
            self.assertEqual(f.read(), b"other institution")
        self.assertEqual(sorted(os.listdir(self.files)), sorted(["ALIAS", OTHER, SENDER]))

    def command(self, *argv):
        """
        Run C{tvlink files ARGV...} in this process; a L{Deferred} of
        C{(status, stdout, stderr)}.
        """
        out, err = io.StringIO(), io.StringIO()
        argv = [argv[0], "--connect", "127.0.0.1:%d" % (self.service.port.getHost().port,), "--sender", SENDER] + list(
            argv[1:]
        )
        d = defer.Deferred.fromCoroutine(filescli.run(getReactor(), argv, out, err, tty=False))
        return d.addCallback(lambda status: (status, out.getvalue(), err.getvalue()))

    @defer.inlineCallbacks
    def test_commandCorruptAndLocalErrors(self):
        """
        C{tvlink files get} ends 3 on a corrupt download (nothing kept) and
        5 when it cannot write its destination; no progress bar off a
        terminal.
        """
        data = os.urandom(100000)
        path = putFile(self.files, SENDER, "day.bin", data)
        status, out, err = yield self.command("get", "day.bin", self.local("first.bin"))
        self.assertEqual((status, err), (filescli.OK, ""))
        info = os.stat(path)
        with open(path, "r+b") as f:
            f.write(bytes([data[0] ^ 1]))
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
        status, out, err = yield self.command("get", "day.bin", self.local("second.bin"))
        self.assertEqual(status, filescli.CORRUPT, err)
        self.assertFalse(os.path.exists(self.local("second.bin")))
        status, out, err = yield self.command("get", "day.bin", os.path.join(self.root, "none", "x"))
        self.assertEqual(status, filescli.LOCAL, err)
        status, out, err = yield self.command("put", os.path.join(self.root, "none"), "x")
        self.assertEqual(status, filescli.LOCAL, err)


class TLSTransferTests(Transfers, ReactorTestCase):
    """
    The transfers over mutual TLS with bin4 frames, and a client without a
    certificate refused.
    """

    tls = True
    header = "bin4"

    @defer.inlineCallbacks
    def test_clientWithoutCertificateRefused(self):
        putFile(self.files, SENDER, "day.bin", b"x")
        anonymous = self.client(tls=ClientTLS(ca=self.certs.ca))
        yield self.assertFailure(anonymous.get("day.bin", self.local("got")), fp.ConnectionCut)
        self.assertFalse(os.path.exists(self.local("got")))
        yield waitUntil(lambda: self.events.named("tls-refused"), 5, "the refusal to be logged")
        self.assertIn("127.0.0.1", self.events.named("tls-refused")[0]["peer"])

    @defer.inlineCallbacks
    def test_senderBoundToTheCertificate(self):
        """
        With C{sender_check} C{"cn"}, a platform acts only for the sender
        its certificate's common name gives: another sender is refused,
        and so is a certificate that names no sender.
        """
        yield self.service.stopService()
        self.service = self.startService(sender_check="cn")
        putFile(self.files, SENDER, "day.bin", b"mine")
        putFile(self.files, OTHER, "day.bin", b"theirs")
        cert, key = self.certs.named[SENDER]
        own = ClientTLS(cert, key, self.certs.ca)
        result = yield self.client(SENDER, tls=own).get("day.bin", self.local("mine"))
        self.assertEqual(result["size"], 4)
        failure = yield self.assertFailure(self.client(OTHER, tls=own).get("day.bin", self.local("x")), fp.Refused)
        self.assertEqual(failure.resp, fp.NOT_ALLOWED)
        self.assertIn("names 'PLAT01', not sender 'PLAT02'", failure.reason)
        yield self.assertFailure(self.client(SENDER).list(), fp.Refused)
        self.assertFalse(os.path.exists(self.local("x")))

