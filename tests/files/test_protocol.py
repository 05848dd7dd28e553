"""
The file exchange as a state machine: the server protocol on a
StringTransport with a Clock (no sockets, no sleeping), its refusals,
its limits and its deadlines.
"""

import os

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.files.kit import Events, HeldJobs, ServerRig, frame, frames, inline, messages, putFile, recordSyncs, sha
from tvlink.files import protocol as fp
from tvlink.files.protocol import Deadlines

SENDER = "PLAT01"


def lose(protocol):
    protocol.connectionLost(Failure(ConnectionDone()))


class DeadlinesTests(SynchronousTestCase):
    def setUp(self):
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.expired = []
        self.deadlines = Deadlines(self.clock, self.expired.append, idle=5, total=12)
        self.deadlines.start()

    def test_idleRunsFromTheLastActivity(self):
        """
        Activity moves the idle deadline without moving a timer; quiet for
        C{idle} seconds expires it, once.
        """
        self.clock.advance(4)
        self.deadlines.touch()
        self.clock.advance(4)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["idle for 5s"])
        self.clock.advance(100)
        self.assertEqual(self.expired, ["idle for 5s"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_totalCannotBeStretched(self):
        """
        A peer that keeps making progress is still stopped at C{total}.
        """
        for _ in range(11):
            self.clock.advance(1)
            self.deadlines.touch()
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["not done within 12s"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self):
        self.deadlines.stop()
        self.clock.advance(100)
        self.assertEqual(self.expired, [])


class ServerExchangeTests(SynchronousTestCase):
    def setUp(self):
        self.rig = ServerRig(self)
        self.events = Events(self)

    def test_list(self):
        """
        A listing holds the sender's plain files only: not another
        sender's, not a partial file, not a link.
        """
        putFile(self.rig.root, SENDER, "b.txt", b"bb")
        putFile(self.rig.root, SENDER, "a.txt", b"a")
        putFile(self.rig.root, SENDER, ".a.txt.0123.part", b"partial")
        putFile(self.rig.root, "OTHER", "secret.txt", b"s")
        os.symlink(os.path.join(self.rig.root, "OTHER", "secret.txt"), os.path.join(self.rig.root, SENDER, "link"))
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "list", "sender": SENDER}))
        [answer] = messages(transport.value())
        self.assertEqual(answer["op"], "files")
        self.assertEqual([(f["name"], f["size"]) for f in answer["files"]], [("a.txt", "1"), ("b.txt", "2")])
        self.assertTrue(transport.disconnecting)

    def refusal(self, message, resp):
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame(message))
        [answer] = messages(transport.value())
        self.assertEqual((answer["op"], answer["resp"]), ("refused", resp), answer)
        self.assertTrue(transport.disconnecting)
        lose(protocol)
        return answer

    def test_traversalRefused(self):
        """
        Every name that is not a plain name is refused C{12} with a reason,
        logged with the peer; nothing outside the sender's directory is
        read.
        """
        putFile(self.rig.root, "OTHER", "secret.txt", b"s")
        with open(os.path.join(self.rig.root, "outside.txt"), "wb") as f:
            f.write(b"outside")
        os.makedirs(os.path.join(self.rig.root, SENDER))
        os.symlink(os.path.join(self.rig.root, "outside.txt"), os.path.join(self.rig.root, SENDER, "link.txt"))
        names = [
            "../outside.txt", "../OTHER/secret.txt", "/etc/passwd", "..", ".", "a/b", "a\\b", "",
            "x" * 129, "bad\x00name", "bad\nname", "bad\x1bname", " lead", ".hidden", "link.txt", None, 7,
        ]
        for name in names:
            answer = self.refusal({"op": "get", "sender": SENDER, "name": name}, fp.NOT_ALLOWED)
            self.assertTrue(answer["reason"])
        refused = self.events.named("refused")
        self.assertEqual(len(refused), len(names))
        self.assertTrue(all(e["peer"].startswith("127.0.0.1:") for e in refused))
        for name in ("../x", "/abs", "a/b"):
            self.refusal({"op": "put", "sender": SENDER, "name": name, "size": "1", "sha256": sha(b"x")}, fp.NOT_ALLOWED)
        self.assertEqual(sorted(os.listdir(self.rig.root)), ["OTHER", SENDER, "outside.txt"])
        self.assertEqual(os.listdir(os.path.join(self.rig.root, SENDER)), ["link.txt"])

    def test_senderRefused(self):
        """
        A sender that cannot be a directory name is refused.
        """
        for sender in ("..", "a/b", "", "../OTHER", "x" * 33, "é", None):
            self.refusal({"op": "list", "sender": sender}, fp.NOT_ALLOWED)

    def test_badRequests(self):
        """
        Not JSON: 30. An unknown operation: 12. No such file: 25. A size
        that is not digits, or over the limit: 13.
        """
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame(b"not json"))
        self.assertEqual(messages(transport.value())[0]["resp"], fp.FORMAT_ERROR)
        self.refusal({"op": "delete", "sender": SENDER, "name": "a"}, fp.NOT_ALLOWED)
        self.refusal({"op": "get", "sender": SENDER, "name": "missing"}, fp.NOT_FOUND)
        self.refusal({"op": "put", "sender": SENDER, "name": "a", "size": "-1", "sha256": sha(b"")}, fp.BAD_SIZE)
        self.rig.factory.max_size = 10
        self.refusal({"op": "put", "sender": SENDER, "name": "a", "size": "11", "sha256": sha(b"")}, fp.BAD_SIZE)
        self.refusal({"op": "put", "sender": SENDER, "name": "a", "size": "1", "sha256": "nothex"}, fp.BAD_SIZE)

    def test_download(self):
        """
        A download answers C{ready} with size, digest and offset 0, sends
        the bytes as frames through a pull producer, and closes on the
        client's C{received}.
        """
        data = os.urandom(30000)
        putFile(self.rig.root, SENDER, "day.txt", data)
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "get", "sender": SENDER, "name": "day.txt"}))
        self.assertFalse(transport.streaming)
        self.rig.pump(transport)
        bodies = frames(transport.value())
        ready = messages(transport.value())[0]
        self.assertEqual((ready["size"], ready["sha256"], ready["offset"]), ("30000", sha(data), "0"))
        self.assertEqual(b"".join(bodies[1:]), data)
        self.assertTrue(all(len(b) <= 9999 for b in bodies[1:]))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(frame({"op": "received", "resp": "00"}))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.events.named("sent")), 1)

    def test_peerGoneWhileHashing(self):
        """
        A download whose peer leaves while its file is being hashed on the
        thread pool does not leave a wrong digest behind: the hashing reads
        its own descriptor of the file, not one that closing the connection
        frees for another file to take.
        """
        data, other = os.urandom(20000), os.urandom(20000)
        putFile(self.rig.root, SENDER, "day.bin", data)
        otherPath = putFile(self.rig.root, SENDER, "other.bin", other)
        held = HeldJobs()
        self.rig.factory.runInThread = self.rig.factory.digests.runInThread = held.runInThread
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "get", "sender": SENDER, "name": "day.bin"}))
        lose(protocol)
        taken = open(otherPath, "rb")
        self.addCleanup(taken.close)
        [(d, f, args)] = held.jobs
        try:
            result = f(*args)
        except OSError as e:
            d.errback(e)
        else:
            d.callback(result)
        self.rig.factory.runInThread = self.rig.factory.digests.runInThread = inline
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "get", "sender": SENDER, "name": "day.bin"}))
        self.rig.pump(transport)
        self.assertEqual(messages(transport.value())[0]["sha256"], sha(data))

    def test_downloadResumes(self):
        """
        Asked for an offset with the digest of the same file, the download
        starts there; with another digest, from 0.
        """
        data = os.urandom(20000)
        putFile(self.rig.root, SENDER, "day.txt", data)
        for digest, start in ((sha(data), 12345), (sha(b"other"), 0)):
            protocol, transport = self.rig.connect()
            protocol.dataReceived(frame({"op": "get", "sender": SENDER, "name": "day.txt", "offset": "12345",
                                         "sha256": digest}))
            self.rig.pump(transport)
            self.assertEqual(messages(transport.value())[0]["offset"], str(start))
            self.assertEqual(b"".join(frames(transport.value())[1:]), data[start:])
            lose(protocol)

    def test_fileShrinksWhileSent(self):
        """
        A file that turns out shorter than announced while its data is
        sent aborts the connection, logged with the peer: no message is
        put among the data frames, where the client would take it for
        bytes of the file.
        """
        data = os.urandom(fp.BURST * 2 + 1000)
        path = putFile(self.rig.root, SENDER, "day.bin", data)
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "get", "sender": SENDER, "name": "day.bin"}))
        transport.producer.resumeProducing()
        os.truncate(path, fp.BURST + 10)
        transport.producer.resumeProducing()
        self.assertEqual([m["op"] for m in messages(transport.value())], ["ready"])
        sent = b"".join(frames(transport.value())[1:])
        self.assertEqual(sent, data[: len(sent)])
        self.assertLess(len(sent), len(data))
        self.assertTrue(transport.disconnected)
        [event] = self.events.named("storage-error")
        self.assertTrue(event["peer"].startswith("127.0.0.1:"))
        lose(protocol)
        self.assertEqual(self.rig.factory.active, 0)
        # Counted for the metrics as logged, with the bytes that went out.
        self.assertEqual(self.rig.factory.events["storage-error"], 1)
        self.assertEqual(self.rig.factory.bytes["sent"], len(sent))

    def cutUpload(self, data, sent):
        """
        An upload of C{data} cut off after C{sent} bytes.
        """
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "up.bin", "size": str(len(data)),
                                     "sha256": sha(data)}))
        protocol.dataReceived(frame(data[:sent]))
        lose(protocol)

    def upload(self, data, digest, chunks=1):
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "up.bin", "size": str(len(data)),
                                     "sha256": digest}))
        ready = messages(transport.value())[0]
        step = max(1, len(data) // chunks)
        offset = int(ready["offset"])
        for at in range(offset, len(data), step):
            protocol.dataReceived(frame(data[at : at + step]))
        return protocol, transport, messages(transport.value())

    def test_upload(self):
        data = os.urandom(25000)
        protocol, transport, answers = self.upload(data, sha(data), chunks=5)
        self.assertEqual([a["op"] for a in answers], ["ready", "stored"])
        self.assertEqual(answers[1]["resp"], "00")
        with open(os.path.join(self.rig.root, SENDER, "up.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(os.path.join(self.rig.root, SENDER)), ["up.bin"])

    def test_uploadDurable(self):
        """
        An upload is answered stored only once the file and the directory
        entry it was renamed to are on disk (both synced).
        """
        synced = recordSyncs(self)
        data = os.urandom(5000)
        protocol, transport, answers = self.upload(data, sha(data))
        self.assertEqual(answers[-1]["resp"], "00")
        folder = os.path.join(self.rig.root, SENDER)
        self.assertIn(os.stat(os.path.join(folder, "up.bin")).st_ino, synced)
        self.assertEqual(synced[-1], os.stat(folder).st_ino)

    def test_uploadCorrupt(self):
        """
        Data that does not have the announced digest is answered C{E1},
        never renamed into place, and its partial file is removed.
        """
        data = os.urandom(5000)
        protocol, transport, answers = self.upload(data, sha(b"something else"), chunks=2)
        self.assertEqual((answers[1]["op"], answers[1]["resp"]), ("stored", fp.CORRUPT))
        self.assertEqual(os.listdir(os.path.join(self.rig.root, SENDER)), [])
        self.assertEqual(len(self.events.named("corrupt")), 1)

    def test_uploadPastItsSize(self):
        """
        More data than announced breaks the exchange: the connection is
        aborted and nothing is stored.
        """
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "up.bin", "size": "3", "sha256": sha(b"abc")}))
        protocol.dataReceived(frame(b"abcd"))
        self.assertTrue(transport.disconnected)
        lose(protocol)
        self.assertFalse(os.path.exists(os.path.join(self.rig.root, SENDER, "up.bin")))

    def test_uploadResumes(self):
        """
        An upload cut off part-way keeps its partial file; the next upload
        of the same content is told to start at its end.
        """
        data = os.urandom(9000)
        self.cutUpload(data, 4000)
        self.assertEqual(len(self.events.named("cut")), 1)
        protocol, transport, answers = self.upload(data, sha(data))
        self.assertEqual(answers[0]["offset"], "4000")
        self.assertEqual(answers[1]["resp"], "00")
        with open(os.path.join(self.rig.root, SENDER, "up.bin"), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_figuresCountWhatIsLogged(self):
        """
        The factory's figures (the file service's metrics) count every
        C{files_event} the server logs, the refusals by the code sent, and
        the file bytes carried each way, a resumed upload's only once.
        """
        data = os.urandom(9000)
        self.cutUpload(data, 4000)
        lose(self.upload(data, sha(data))[0])
        putFile(self.rig.root, SENDER, "day.txt", b"x" * 300)
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "get", "sender": SENDER, "name": "day.txt"}))
        self.rig.pump(transport)
        protocol.dataReceived(frame({"op": "received", "resp": "00"}))
        lose(protocol)
        self.refusal({"op": "get", "sender": SENDER, "name": "nope.bin"}, fp.NOT_FOUND)
        self.refusal({"op": "get", "sender": "../x", "name": "a"}, fp.NOT_ALLOWED)
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "v.bin", "size": "3", "sha256": sha(b"abc")}))
        protocol.dataReceived(frame(b"abcd"))
        lose(protocol)
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "t.bin", "size": "3", "sha256": sha(b"abc")}))
        self.rig.clock.advance(60)
        lose(protocol)

        factory = self.rig.factory
        logged = {}
        for event in self.events.events:
            logged[event["files_event"]] = logged.get(event["files_event"], 0) + 1
        self.assertEqual(dict(factory.events), logged)
        self.assertEqual(
            {name: logged.get(name) for name in ("cut", "stored", "sent", "refused", "violation", "timeout")},
            {"cut": 3, "stored": 1, "sent": 1, "refused": 2, "violation": 1, "timeout": 1},
        )
        self.assertEqual(dict(factory.refusals), {fp.NOT_FOUND: 1, fp.NOT_ALLOWED: 1})
        self.assertEqual(factory.bytes, {"sent": 300, "received": 9000})
        self.assertEqual((factory.active, factory.connections), (0, 0))

    def test_busy(self):
        """
        Beyond C{max_transfers} a transfer is refused C{91}; once one ends
        the next is accepted.
        """
        self.rig.factory.max_transfers = 1
        putFile(self.rig.root, SENDER, "a.txt", b"abc")
        first, _ = self.rig.connect()
        first.dataReceived(frame({"op": "get", "sender": SENDER, "name": "a.txt"}))
        self.refusal({"op": "get", "sender": SENDER, "name": "a.txt"}, fp.BUSY)
        lose(first)
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "get", "sender": SENDER, "name": "a.txt"}))
        self.assertEqual(messages(transport.value())[0]["op"], "ready")

    def test_connectionCap(self):
        """
        Beyond four connections per transfer slot a connection is closed
        at once, and logged; one that ends frees its place.
        """
        from twisted.internet.address import IPv4Address

        self.rig.factory.max_transfers = 1
        held = [self.rig.connect() for _ in range(4)]
        self.assertIsNone(self.rig.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertEqual(len(self.events.named("too-many-connections")), 1)
        lose(held[0][0])
        self.assertIsNotNone(self.rig.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2)))

    def test_stalledPeerDropped(self):
        """
        A peer that sends nothing after the request is aborted at the idle
        timeout; its transfer slot is freed.
        """
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "up.bin", "size": "10", "sha256": sha(b"x")}))
        self.assertEqual(self.rig.factory.active, 1)
        self.rig.clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        self.rig.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        lose(protocol)
        self.assertEqual(self.rig.factory.active, 0)
        self.assertEqual(len(self.events.named("timeout")), 1)

    def test_slowDripDropped(self):
        """
        A peer dripping a byte a second never goes idle but is dropped at
        the total deadline.
        """
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "up.bin", "size": "100000",
                                     "sha256": sha(b"x")}))
        for second in range(25):
            if transport.disconnected:
                break
            protocol.dataReceived(b"0")
            self.rig.clock.advance(1)
        self.assertEqual(second, 20)
        self.assertIn("within 20s", self.events.named("timeout")[0]["why"])

    def test_requestDrippedDropped(self):
        """
        A request dripped a byte a second, or one that never comes, is
        dropped at the idle timeout from the connection, not the total
        one: a place on the port is held for C{idle} seconds at most
        before a request, however the peer sends.
        """
        request = frame({"op": "list", "sender": SENDER})
        protocol, transport = self.rig.connect()
        for second in range(25):
            if transport.disconnected:
                break
            protocol.dataReceived(request[second : second + 1])
            self.rig.clock.advance(1)
        self.assertEqual(second, 5)
        [event] = self.events.named("timeout")
        self.assertIn("no request within 5s", event["why"])
        self.assertTrue(event["peer"].startswith("127.0.0.1:"))
        lose(protocol)
        self.assertEqual(self.rig.factory.connections, 0)
        self.assertEqual(self.rig.clock.getDelayedCalls(), [])

    def test_requestInTimeGoesOn(self):
        """
        Once its request came, a transfer runs on its idle and total
        deadlines alone.
        """
        data = os.urandom(100)
        protocol, transport = self.rig.connect()
        self.rig.clock.advance(4)
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "up.bin", "size": "100",
                                     "sha256": sha(data)}))
        for at in range(0, 100, 10):
            self.rig.clock.advance(1.5)
            protocol.dataReceived(frame(data[at : at + 10]))
        self.assertEqual(messages(transport.value())[-1]["resp"], "00")
        self.assertEqual(self.events.named("timeout"), [])

    def test_readerThatDoesNotRead(self):
        """
        A download whose reader stops reading (the producer is never
        resumed again) is dropped at the idle timeout.
        """
        putFile(self.rig.root, SENDER, "big.bin", os.urandom(600000))
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "get", "sender": SENDER, "name": "big.bin"}))
        transport.producer.resumeProducing()
        self.rig.clock.advance(3)
        transport.producer.resumeProducing()
        self.rig.clock.advance(4)
        self.assertFalse(transport.disconnected)
        self.rig.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_listingFitsOneFrame(self):
        """
        A listing that would not fit in one frame holds the names that fit
        and says how many more there are.
        """
        for n in range(200):
            putFile(self.rig.root, SENDER, "%03d-%s" % (n, "x" * 100), b"")
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "list", "sender": SENDER}))
        [body] = frames(transport.value())
        self.assertLessEqual(len(body), 9999)
        [answer] = messages(transport.value())
        self.assertEqual(len(answer["files"]) + int(answer["more"]), 200)
        self.assertEqual(answer["files"][0]["name"][:4], "000-")

    def test_listingOffTheReactorAndBounded(self):
        """
        A directory is read on the thread pool, not the reactor's thread,
        and what is kept of it is bounded by what one frame can hold,
        however many files it has: the first names by order, and the count
        of the rest.
        """
        for n in range(300):
            putFile(self.rig.root, SENDER, "%03d" % (299 - n,), b"")
        held = HeldJobs()
        self.rig.factory.runInThread = held.runInThread
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "list", "sender": SENDER}))
        self.assertEqual(transport.value(), b"")
        [(d, f, args)] = held.jobs
        names, total = f(*args)
        self.assertEqual(total, 300)
        self.assertLess(len(names), 300)
        self.assertEqual([n for n, _, _ in names], ["%03d" % (n,) for n in range(len(names))])
        d.callback((names, total))
        [answer] = messages(transport.value())
        self.assertEqual(answer["files"][0]["name"], "000")
        self.assertEqual(len(answer["files"]) + int(answer["more"]), 300)
        self.assertTrue(transport.disconnecting)

    def test_listingRefusedOffTheReactor(self):
        """
        A sender directory that is a link is refused C{12} from the thread
        pool's answer too, logged with the peer.
        """
        os.makedirs(os.path.join(self.rig.root, "OTHER"))
        os.symlink(os.path.join(self.rig.root, "OTHER"), os.path.join(self.rig.root, SENDER))
        answer = self.refusal({"op": "list", "sender": SENDER}, fp.NOT_ALLOWED)
        self.assertIn("not a plain directory", answer["reason"])
        self.assertTrue(self.events.named("refused")[0]["peer"].startswith("127.0.0.1:"))

    def test_storageErrorAnswered(self):
        """
        An upload that cannot be renamed into place (a directory took its
        name while the data came) is answered C{96}, and the exchange ends
        cleanly.
        """
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "up.bin", "size": "4", "sha256": sha(b"data")}))
        self.assertEqual(messages(transport.value())[0]["op"], "ready")
        os.makedirs(os.path.join(self.rig.root, SENDER, "up.bin"))
        protocol.dataReceived(frame(b"data"))
        answers = messages(transport.value())
        self.assertEqual((answers[-1]["op"], answers[-1]["resp"]), ("stored", fp.STORAGE_ERROR))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.events.named("storage-error")), 1)

    def test_uploadOverALinkOrADirectoryRefused(self):
        """
        An upload to a name that is a link, a directory or another special
        file is refused C{12} before any data comes, logged with the peer;
        the link and what it points to are left alone, and no partial file
        is made.
        """
        putFile(self.rig.root, "OTHER", "secret.txt", b"secret")
        folder = os.path.join(self.rig.root, SENDER)
        os.makedirs(os.path.join(folder, "dir"))
        os.symlink(os.path.join(self.rig.root, "OTHER", "secret.txt"), os.path.join(folder, "link.txt"))
        os.symlink(os.path.join(self.rig.root, "nowhere"), os.path.join(folder, "dangling.txt"))
        os.mkfifo(os.path.join(folder, "fifo"))
        for name in ("dir", "link.txt", "dangling.txt", "fifo"):
            answer = self.refusal({"op": "put", "sender": SENDER, "name": name, "size": "4", "sha256": sha(b"data")},
                                  fp.NOT_ALLOWED)
            self.assertIn(name, answer["reason"])
        self.assertEqual(sorted(os.listdir(folder)), ["dangling.txt", "dir", "fifo", "link.txt"])
        self.assertTrue(os.path.islink(os.path.join(folder, "link.txt")))
        with open(os.path.join(self.rig.root, "OTHER", "secret.txt"), "rb") as f:
            self.assertEqual(f.read(), b"secret")
        refused = self.events.named("refused")
        self.assertEqual(len(refused), 4)
        self.assertTrue(all(e["peer"].startswith("127.0.0.1:") for e in refused))


    def test_expiredPartsRemoved(self):
        """
        A partial file no upload has written to for C{part_lifetime}
        seconds is removed, logged; a younger one, the one of an upload in
        progress, and every other file are kept.
        """
        self.rig.factory.part_lifetime = 100.0
        now = 2000000000.0
        self.rig.clock.advance(now)
        folder = os.path.join(self.rig.root, SENDER)
        stale = putFile(self.rig.root, SENDER, ".old.bin.0123456789abcdef.part", b"cut off")
        young = putFile(self.rig.root, SENDER, ".young.bin.0123456789abcdef.part", b"cut off")
        other = putFile(self.rig.root, "OTHER", ".x.0123456789abcdef.part", b"cut off")
        kept = [putFile(self.rig.root, SENDER, "old.bin", b"a file"), putFile(self.rig.root, SENDER, ".tmp", b"not ours")]
        protocol, transport = self.rig.connect()
        protocol.dataReceived(frame({"op": "put", "sender": SENDER, "name": "up.bin", "size": "9", "sha256": sha(b"x" * 9)}))
        protocol.dataReceived(frame(b"xxx"))
        [active] = [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(".up.bin.")]
        for path in [stale, other, active] + kept:
            os.utime(path, (now - 101, now - 101))
        os.utime(young, (now - 99, now - 99))
        removed = self.successResultOf(self.rig.factory.expireParts())
        self.assertEqual(sorted(removed), sorted([stale, other]))
        self.assertEqual(sorted(os.listdir(folder)), sorted(os.path.basename(p) for p in [young, active] + kept))
        self.assertEqual(os.listdir(os.path.join(self.rig.root, "OTHER")), [])
        self.assertEqual(sorted(e["path"] for e in self.events.named("part-expired")), sorted(removed))
        protocol.dataReceived(frame(b"x" * 6))
        self.assertEqual(messages(transport.value())[-1]["resp"], "00")

    def test_sameUploadTwiceAtOnce(self):
        """
        A second upload of the same content while the first is in progress
        is refused C{91}; once the first ends it may go on.
        """
        data = os.urandom(3000)
        request = {"op": "put", "sender": SENDER, "name": "up.bin", "size": "3000", "sha256": sha(data)}
        first, _ = self.rig.connect()
        first.dataReceived(frame(request))
        self.refusal(request, fp.BUSY)
        lose(first)
        protocol, transport, answers = self.upload(data, sha(data))
        self.assertEqual(answers[-1]["resp"], "00")

class PartSweepTests(SynchronousTestCase):
    def test_serviceSweeps(self):
        """
        The file service sweeps the expired partial files when it starts
        and every hour (or every lifetime, if shorter) while it runs; not
        once stopped.
        """
        from twisted.internet.testing import MemoryReactorClock

        from tests.files.kit import inline, tempRoot
        from tvlink.files.service import FileService
        from tvlink.link.settings import LinkSettings

        reactor = MemoryReactorClock()
        reactor.advance(2000000000.0)
        root = tempRoot(self)
        service = FileService("tcp:0:interface=127.0.0.1", root, LinkSettings(reactor=reactor), runInThread=inline,
                              part_lifetime=7200.0)

        def part(name):
            path = putFile(root, SENDER, "." + name + ".0123456789abcdef.part", b"cut off")
            os.utime(path, (reactor.seconds() - 7201, reactor.seconds() - 7201))
            return path

        first = part("first")
        service.startService()
        self.assertFalse(os.path.exists(first))
        second = part("second")
        reactor.advance(3599)
        self.assertTrue(os.path.exists(second))
        reactor.advance(1)
        self.assertFalse(os.path.exists(second))
        service.stopService()
        third = part("third")
        reactor.advance(7200)
        self.assertTrue(os.path.exists(third))
        self.assertEqual(reactor.getDelayedCalls(), [])


class ClientExchangeTests(SynchronousTestCase):
    """
    The client's end against a server that misbehaves, on a Clock.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        from tvlink.link.settings import LinkSettings

        self.clock = Clock()

        class Client:
            settings = LinkSettings(reactor=self.clock)
            reactor = self.clock
            idle, total = 5.0, 20.0

        self.clientSide = Client

    def connect(self, request):
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from tvlink.files.client import FileClientProtocol

        protocol = FileClientProtocol(self.clientSide, request)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7001))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_downloadDurable(self):
        """
        A download is renamed into place, and the directory entry synced,
        before it is reported received.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from tests.files.kit import tempRoot
        from tvlink.files.client import FileClientProtocol

        synced = recordSyncs(self)
        folder = tempRoot(self)
        dest = os.path.join(folder, "day.bin")
        data = os.urandom(3000)
        protocol = FileClientProtocol(self.clientSide, {"op": "get", "sender": SENDER, "name": "day.bin", "offset": "0"},
                                      part=(dest, 0, None, None))
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7001)))
        protocol.dataReceived(frame({"op": "ready", "resp": "00", "name": "day.bin", "size": "3000", "sha256": sha(data),
                                     "offset": "0"}))
        protocol.dataReceived(frame(data))
        self.assertEqual(os.listdir(folder), ["day.bin"])
        self.assertEqual(synced[-1], os.stat(folder).st_ino)
        self.assertEqual(protocol.outcome["sha256"], sha(data))

    def test_downloadNeverWritesThroughALink(self):
        """
        A link planted where the download's partial file (or its record)
        goes is not followed: what it points to is left alone, and the
        download fails with the local error.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from tests.files.kit import tempRoot
        from tvlink.files.client import FileClientProtocol

        folder = tempRoot(self)
        victim = os.path.join(folder, "victim")
        data = os.urandom(3000)
        for planted in (".part", ".part.json"):
            with open(victim, "wb") as f:
                f.write(b"precious")
            dest = os.path.join(folder, "day%s.bin" % (planted,))
            os.symlink(victim, dest + planted)
            request = {"op": "get", "sender": SENDER, "name": "day.bin", "offset": "0"}
            protocol = FileClientProtocol(self.clientSide, request, part=(dest, 0, None, None))
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7001))
            protocol.makeConnection(transport)
            protocol.dataReceived(frame({"op": "ready", "resp": "00", "name": "day.bin", "size": "3000",
                                         "sha256": sha(data), "offset": "0"}))
            protocol.dataReceived(frame(data))
            with open(victim, "rb") as f:
                self.assertEqual(f.read(), b"precious", planted)
            self.assertIsInstance(protocol.outcome, OSError)
            self.assertFalse(os.path.exists(dest))
            self.assertTrue(transport.disconnected)

    def test_requestSentFirst(self):
        protocol, transport = self.connect({"op": "list", "sender": SENDER})
        self.assertEqual(messages(transport.value()), [{"op": "list", "sender": SENDER}])

    def test_wrongAnswer(self):
        """
        An answer that does not fit the request breaks the exchange: the
        call fails saying so.
        """
        protocol, transport = self.connect({"op": "list", "sender": SENDER})
        protocol.dataReceived(frame({"op": "ready", "resp": "00", "offset": "0"}))
        self.assertTrue(transport.disconnected)
        lose(protocol)
        failure = self.failureResultOf(protocol.result, fp.TransferError)
        self.assertIn("unexpected answer 'ready'", str(failure.value))

    def test_listingWithBadNames(self):
        """
        A listing naming a file no server may serve (a terminal escape, a
        path), or with a time that is not one, breaks the exchange: nothing
        of it reaches the caller, or a terminal.
        """
        for name, mtime in (("\x1b]0;owned\x07day.txt", "20261204000000"), ("../x", "20261204000000"),
                            ("a/b", "20261204000000"), (7, "20261204000000"), ("day.txt", "\x1b[2J0000000000")):
            protocol, transport = self.connect({"op": "list", "sender": SENDER})
            protocol.dataReceived(frame({"op": "files", "resp": "00", "files": [
                {"name": "ok.txt", "size": "1", "mtime": "20261204000000"},
                {"name": name, "size": "1", "mtime": mtime}]}))
            self.assertTrue(transport.disconnected)
            lose(protocol)
            failure = self.failureResultOf(protocol.result, fp.TransferError)
            self.assertIn("bad files answer", str(failure.value))

    def test_reasonsQuoted(self):
        """
        A server's reason with control characters in it is quoted in the
        error, so no escape of it reaches a terminal.
        """
        for answer, error in (({"op": "refused", "resp": "12", "reason": "no\x1b[2J"}, fp.Refused),
                              ({"op": "refused", "resp": "\x1b[2J", "reason": "no"}, fp.Refused),
                              ({"op": "stored", "resp": "E1", "reason": "bad\x1b[2J"}, fp.Corrupt),
                              ({"op": "stored", "resp": "96", "reason": "disk\x1b[2J"}, fp.Refused)):
            protocol, transport = self.connect({"op": "put", "sender": SENDER, "name": "a", "size": "0",
                                                "sha256": sha(b"")})
            protocol.size, protocol.digest, protocol.offset = 0, sha(b""), 0
            protocol.dataReceived(frame(answer))
            lose(protocol)
            failure = self.failureResultOf(protocol.result, error)
            self.assertNotIn("\x1b", str(failure.value))
            self.assertIn("\\x1b", str(failure.value))

    def test_refusal(self):
        protocol, transport = self.connect({"op": "list", "sender": SENDER})
        protocol.dataReceived(frame({"op": "refused", "resp": "12", "reason": "no"}))
        lose(protocol)
        self.assertEqual(self.failureResultOf(protocol.result, fp.Refused).value.resp, "12")

    def test_silentServer(self):
        """
        A server that never answers is given up at the client's idle
        deadline.
        """
        protocol, transport = self.connect({"op": "list", "sender": SENDER})
        self.clock.advance(5)
        self.assertTrue(transport.disconnected)
        lose(protocol)
        self.assertIn("idle for 5s", str(self.failureResultOf(protocol.result, fp.ConnectionCut).value))


class ProgressBarTests(SynchronousTestCase):
    def test_drawnAtMostTenTimesASecond(self):
        import io

        from twisted.internet.task import Clock

        from tvlink.cli.files import ProgressBar

        clock, out = Clock(), io.StringIO()
        bar = ProgressBar(out, clock, "get a.bin")
        for done in range(0, 1000, 100):
            bar(done, 1000)
            clock.advance(0.06)
        self.assertEqual(out.getvalue().count("\r"), 5)
        self.assertNotIn("\n", out.getvalue())
        bar(1000, 1000)
        self.assertTrue(out.getvalue().endswith("\n"))
        self.assertIn("get a.bin [" + "#" * 30 + "] 100%", out.getvalue())

