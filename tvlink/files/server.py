"""
The server end of the file exchange (the payment role's C{--files-listen},
C{--files-dir}): one short connection per transfer, each confined to the
directory of the sender institution it names
(L{tvlink.files.names.FileStore}); L{FileServerFactory} holds the limits.
L{tvlink.files.service.FileService} listens with it.
"""

import collections
import hashlib
import os
import time

from twisted.internet.defer import succeed
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from tvlink.files import protocol as fp
from tvlink.files.digests import DigestCache, hashPrefix, inThreadPool
from tvlink.files.names import NameRefused, checkName, checkSender, renameIntoPlace
from tvlink.link.settings import atLeast, positive

#: Defaults of the limits (seconds, counts, bytes).
DEFAULT_IDLE = 60.0
DEFAULT_TOTAL = 3600.0
DEFAULT_MAX_TRANSFERS = 8
DEFAULT_MAX_SIZE = 4 * 1024**3
#: Seconds a partial file no upload writes to is kept for a resume.
DEFAULT_PART_LIFETIME = 24 * 3600.0

#: How the sender a client names is checked: taken as given, or against
#: the common name of its TLS certificate.
SENDER_CHECKS = ("none", "cn")


class Busy(Exception):
    """
    The request cannot be served now; it may be tried again later.
    """


def mtimeText(seconds):
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(seconds))


class FileServerProtocol(fp.FileExchange):
    """
    One connection to the file service: one request, its answer, and for
    a download or an upload the data and the last word.
    """

    log = Logger(namespace="tvlink.files")

    state = "request"
    sender = None
    name = None
    counted = False
    part = None
    file = None
    requestDue = None

    def connectionMade(self):
        factory = self.factory
        self.settings, self.clock = factory.settings, factory.clock
        self.idle, self.total = factory.idle, factory.total
        fp.FileExchange.connectionMade(self)
        # The request is one small frame: it has the idle timeout from the
        # connection to arrive whole, however it is dripped.
        self.requestDue = self.clock.callLater(self.idle, self.requestTimedOut)

    def requestTimedOut(self):
        self.requestDue = None
        if self.state == "request" and not self.finished:
            self.timedOut("no request within %gs" % (self.idle,))

    def requestCame(self):
        self.state = "answering"
        self.stopRequestClock()

    def stopRequestClock(self):
        call, self.requestDue = self.requestDue, None
        if call is not None and call.active():
            call.cancel()

    def messageReceived(self, message):
        if self.state == "request":
            self.requestCame()
            self.requestReceived(message)
        elif self.state == "sent" and message.get("op") == fp.RECEIVED:
            self.downloadAcknowledged(message)
        else:
            self.protocolError("message %r unexpected while %s" % (message.get("op"), self.state))

    def formatError(self, why):
        if self.state == "request":
            self.requestCame()
            self.refuse(fp.FORMAT_ERROR, why)
        else:
            self.protocolError(why)

    def note(self, level, event, text, **fields):
        """
        Log C{text} at C{level} as C{files_event} C{event}, with the peer,
        the sender and the file name.
        """
        self.logged(event)
        getattr(self.log, level)(text, files_event=event, peer=self.peer, sender=self.sender, name=self.name, **fields)

    def logged(self, event):
        self.factory.events[event] += 1

    def storageError(self, error):
        """
        The disk failed under a transfer: the peer is told C{96}.
        """
        self.note(
            "error",
            "storage-error",
            "files: {name} from {peer} (sender {sender}) not stored: cannot write the file: {why}",
            why=str(error),
        )
        self.sendMessage({"op": fp.STORED if self.state == "receiving" else fp.REFUSED, "resp": fp.STORAGE_ERROR,
                          "reason": "storage: %s" % (error.strerror or error,)})
        self.finish(str(error))

    def refuse(self, resp, reason, op=None):
        name = self.name
        self.logged("refused")
        self.factory.refusals[resp if isinstance(resp, str) else repr(resp)] += 1
        self.log.warn(
            "files: refused {op} of {name} from {peer} (sender {sender}): {resp} {reason}",
            files_event="refused",
            peer=self.peer,
            sender=self.sender if isinstance(self.sender, str) else None,
            op=op if isinstance(op, str) and op.isprintable() else repr(op),
            name=name if isinstance(name, str) and name.isprintable() else repr(name),
            resp=resp,
            reason=reason,
        )
        self.sendMessage({"op": fp.REFUSED, "resp": resp, "reason": reason})
        self.finish(reason)

    def requestReceived(self, message):
        op = message.get("op")
        if op not in fp.REQUESTS:
            return self.refuse(fp.NOT_ALLOWED, "unknown request %r (list, get or put)" % (op,))
        try:
            self.sender = checkSender(message.get("sender"))
        except NameRefused as e:
            return self.refuse(fp.NOT_ALLOWED, str(e), op)
        mismatch = self.factory.senderMismatch(self.transport, self.sender)
        if mismatch is not None:
            return self.refuse(fp.NOT_ALLOWED, mismatch, op)
        if op == fp.LIST:
            return self.listFiles()
        self.name = message.get("name")
        if not self.factory.startTransfer():
            return self.refuse(
                fp.BUSY, "%d transfers already in progress; try later" % (self.factory.max_transfers,), op
            )
        self.counted = True
        try:
            if op == fp.GET:
                d = self.startDownload(message)
            else:
                d = self.startUpload(message)
        except NameRefused as e:
            return self.refuse(fp.NOT_ALLOWED, str(e), op)
        except Busy as e:
            return self.refuse(fp.BUSY, str(e), op)
        except FileNotFoundError:
            return self.refuse(fp.NOT_FOUND, "no file %r" % (self.name,), op)
        except ValueError as e:
            return self.refuse(fp.BAD_SIZE, str(e), op)
        except OSError as e:
            return self.refuse(fp.STORAGE_ERROR, "storage: %s" % (e.strerror or e,), op)
        d.addErrback(self._failed, op)

    def _failed(self, failure, op):
        if self.finished or failure.check(fp.ConnectionCut):
            return None
        # While data frames go out, a message would pass for bytes of the
        # file: the connection is aborted instead.
        sending = self.state == "sending"
        if failure.check(OSError):
            if sending:
                return fp.FileExchange.storageError(self, failure.value)
            return self.refuse(fp.STORAGE_ERROR, "storage: %s" % (failure.getErrorMessage(),), op)
        self.log.failure("files: {op} from {peer} failed", failure, op=op, peer=self.peer)
        if sending:
            return self.abort("internal error")
        return self.refuse(fp.STORAGE_ERROR, "internal error", op)

    # -- list ----------------------------------------------------------------

    def listFiles(self):
        empty = {"op": fp.FILES, "resp": fp.OK, "files": []}
        room = self.chunk - len(self.codec.encode(empty)) - len(',"more":"999999999"')
        smallest = len(self.codec.encode({"name": "x", "size": "0", "mtime": mtimeText(0)})) + 1
        d = self.factory.runInThread(self.factory.store.listing, self.sender, max(room // smallest, 0))
        d.addCallback(self.listed, empty, room)
        d.addErrback(self._listingFailed)

    def _listingFailed(self, failure):
        if self.finished:
            return None
        if failure.check(NameRefused):
            return self.refuse(fp.NOT_ALLOWED, failure.getErrorMessage(), fp.LIST)
        return self._failed(failure, fp.LIST)

    def listed(self, listing, answer, room):
        """
        Answer with the names of C{listing} (L{FileStore.listing}) that fit
        in C{room} bytes, and the count of the others.
        """
        if self.finished:
            return
        found, count = listing
        for n, s, m in found:
            entry = {"name": n, "size": fp.sizeText(s), "mtime": mtimeText(m)}
            room -= len(self.codec.encode(entry)) + 1
            if room < 0:
                break
            answer["files"].append(entry)
        if len(answer["files"]) < count:
            answer["more"] = fp.sizeText(count - len(answer["files"]))
        self.log.info(
            "files: listed {count} files for {peer} (sender {sender})",
            files_event="listed",
            peer=self.peer,
            sender=self.sender,
            count=len(answer["files"]),
        )
        self.logged("listed")
        self.sendMessage(answer)
        self.finish()

    # -- download --------------------------------------------------------------

    def startDownload(self, message):
        offset = fp.parseSize(message.get("offset", "0"), "offset")
        wanted = message.get("sha256")
        f, size = self.factory.store.openForReading(self.sender, self.name)
        self.file = f
        d = self.factory.digests.digestOf(f, size)

        def digested(digest):
            if self.finished:
                return
            start = offset if (wanted == digest and offset <= size) else 0
            self.sendMessage(
                {
                    "op": fp.READY,
                    "resp": fp.OK,
                    "name": self.name,
                    "size": fp.sizeText(size),
                    "sha256": digest,
                    "offset": fp.sizeText(start),
                }
            )
            self.state = "sending"
            self.size, self.offset = size, start
            f.seek(start)
            return self.sendData(f, size - start, self.factory.countSent).addCallback(sent)

        def sent(count):
            self.state = "sent"

        return d.addCallback(digested)

    def downloadAcknowledged(self, message):
        resp = message.get("resp")
        event = "sent" if resp == fp.OK else "corrupt"
        self.note(
            "info" if resp == fp.OK else "warn",
            event,
            "files: {name} sent to {peer} (sender {sender}), bytes {offset}-{size}; the peer says {resp}",
            offset=self.offset,
            size=self.size,
            resp=resp,
        )
        self.finish()

    # -- upload ------------------------------------------------------------------

    def startUpload(self, message):
        checkName(self.name)
        size = fp.parseSize(message.get("size"), "size")
        digest = message.get("sha256")
        if not fp.isDigest(digest):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        if size > self.factory.max_size:
            raise ValueError("%d bytes is over the %d allowed" % (size, self.factory.max_size))
        self.final = self.factory.store.pathForWriting(self.sender, self.name)
        part = self.factory.store.partPath(self.sender, self.name, digest)
        if part in self.factory.receiving:
            raise Busy("an upload of the same %r is in progress" % (self.name,))
        self.part = part
        self.factory.receiving.add(part)
        self.size, self.expected = size, digest
        have = 0
        if os.path.lexists(self.part):
            if os.path.islink(self.part) or not os.path.isfile(self.part):
                raise NameRefused("the partial file of %r is not a plain file" % (self.name,))
            have = os.path.getsize(self.part)
            if have > size:
                have = 0
        d = self.factory.runInThread(hashPrefix, self.part, have) if have else succeed(None)

        def hashed(prefix):
            if self.finished:
                return
            flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            self.file = os.fdopen(os.open(self.part, flags, 0o640), "r+b")
            self.file.truncate(have)
            self.file.seek(have)
            self.offset = have
            self.sendMessage({"op": fp.READY, "resp": fp.OK, "name": self.name, "offset": fp.sizeText(have)})
            self.state = "receiving"
            self.startReceiving(self.file, prefix or hashlib.sha256(), size - have, self.factory.countReceived)

        return d.addCallback(hashed)

    def dataComplete(self, receiving):
        self.file = None
        got = receiving.close()
        if got != self.expected:
            os.remove(self.part)
            reason = "SHA-256 of the %d bytes received is %s, not %s" % (self.size, got, self.expected)
            self.note(
                "warn",
                "corrupt",
                "files: upload of {name} from {peer} (sender {sender}) is corrupt; not stored: {reason}",
                reason=reason,
            )
            self.sendMessage({"op": fp.STORED, "resp": fp.CORRUPT, "reason": reason})
            return self.finish(reason)
        renameIntoPlace(self.part, self.final)
        self.note(
            "info",
            "stored",
            "files: stored {name} from {peer} (sender {sender}): {size} bytes, {offset} of them from an "
            "earlier try",
            size=self.size,
            offset=self.offset,
        )
        self.sendMessage({"op": fp.STORED, "resp": fp.OK, "sha256": got})
        self.finish()

    def connectionLost(self, reason):
        cut = not self.finished
        if self.factory.tls and self.state == "request":
            self.tlsRefused(reason)
        self.stopRequestClock()
        fp.FileExchange.connectionLost(self, reason)
        f, self.file = self.file, None
        if f is not None:
            f.close()
            if self.state in ("receiving", "sending"):
                self.note(
                    "info",
                    "cut",
                    "files: transfer of {name} with {peer} (sender {sender}) cut off: {why}",
                    why=self.closeReason if not cut else "the peer closed the connection",
                )
        self.factory.receiving.discard(self.part)
        self.factory.connectionEnded()
        if self.counted:
            self.counted = False
            self.factory.endTransfer()


    def tlsRefused(self, reason):
        """
        Log why a TLS connection ended before its request, if TLS was the
        reason (a client without a certificate under mutual TLS, or one
        the CA did not sign).
        """
        from tvlink.link.tlslink import describeTLSFailure, isTLSFailure
        from tvlink.link.verify import takeRefusal

        why = takeRefusal(self.transport)
        if why is None and isTLSFailure(reason):
            why = describeTLSFailure(reason)
        if why is not None:
            self.logged("tls-refused")
            self.log.warn(
                "files: TLS with {peer} failed, connection refused: {reason}",
                files_event="tls-refused",
                peer=self.peer,
                reason=why,
            )


class FileServerFactory(ServerFactory):
    """
    The file service's connections: the store, the limits, a cache of
    digests.

    @ivar active: transfers (downloads and uploads) in progress.
    @ivar connections: connections open.
    @ivar events: how many times each C{files_event} was logged.
    @ivar refusals: refusals by the answer code sent.
    @ivar bytes: file data C{sent} (downloads) and C{received} (uploads),
        in bytes, resumed parts not counted twice.
    """

    protocol = FileServerProtocol
    noisy = False
    log = Logger(namespace="tvlink.files")
    #: Whether the connections are over TLS (set by L{FileService}).
    tls = False

    def __init__(
        self,
        store,
        settings,
        idle=DEFAULT_IDLE,
        total=DEFAULT_TOTAL,
        max_transfers=DEFAULT_MAX_TRANSFERS,
        max_size=DEFAULT_MAX_SIZE,
        sender_check="none",
        runInThread=None,
        part_lifetime=DEFAULT_PART_LIFETIME,
    ):
        self.store = store
        self.settings = settings
        self.clock = settings.reactor
        self.idle = positive("files idle", idle)
        self.total = positive("files total", total)
        self.max_transfers = atLeast("max_transfers", max_transfers, 1)
        self.max_size = atLeast("max_size", max_size, 0)
        if sender_check not in SENDER_CHECKS:
            raise ValueError("sender_check must be one of %s, not %r" % (", ".join(SENDER_CHECKS), sender_check))
        self.sender_check = sender_check
        self.part_lifetime = positive("part_lifetime", part_lifetime)
        self.runInThread = runInThread if runInThread is not None else inThreadPool(self.clock)
        self.digests = DigestCache(self.runInThread)
        self.active = 0
        self.connections = 0
        #: The partial files of the uploads in progress.
        self.receiving = set()
        self.events = collections.Counter()
        self.refusals = collections.Counter()
        self.bytes = {"sent": 0, "received": 0}

    def countSent(self, count):
        self.bytes["sent"] += count

    def countReceived(self, count):
        self.bytes["received"] += count

    #: Connections held at once, for every transfer slot: the others
    #: wait at most the idle timeout for their request, and beyond this
    #: many a connection is closed as soon as it is accepted.
    connectionsPerTransfer = 4

    @property
    def max_connections(self):
        return self.max_transfers * self.connectionsPerTransfer

    def buildProtocol(self, addr):
        """
        A protocol for a new connection, or C{None} (closed at once) when
        L{max_connections} are open.
        """
        if self.connections >= self.max_connections:
            self.events["too-many-connections"] += 1
            self.log.warn(
                "files: connection from {peer} refused: {count} connections open",
                files_event="too-many-connections",
                peer="%s:%s" % (getattr(addr, "host", addr), getattr(addr, "port", "")),
                count=self.connections,
            )
            return None
        self.connections += 1
        return ServerFactory.buildProtocol(self, addr)

    def connectionEnded(self):
        self.connections -= 1

    def senderMismatch(self, transport, sender):
        """
        Why a connection on C{transport} may not act for C{sender}, or
        C{None}. With C{sender_check} C{"cn"} the client certificate's
        common name must be the sender; with C{"none"} any sender is taken
        as given.
        """
        if self.sender_check == "none":
            return None
        certificate = getattr(transport, "getPeerCertificate", lambda: None)()
        if certificate is None:
            return "sender %r needs a client certificate naming it" % (sender,)
        from cryptography.x509.oid import NameOID

        names = certificate.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common = names[0].value if names else None
        if common != sender:
            return "the client certificate names %r, not sender %r" % (common, sender)
        return None

    def expireParts(self):
        """
        Remove the partial files no upload has written to for
        C{part_lifetime} seconds (cut-off uploads not tried again), except
        those of the uploads in progress.

        @return: a L{Deferred} of the paths removed.
        """

        def expire(parts):
            oldest = self.clock.seconds() - self.part_lifetime
            removed = []
            for path, mtime in parts:
                if mtime >= oldest or path in self.receiving:
                    continue
                try:
                    os.remove(path)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    self.events["storage-error"] += 1
                    self.log.error("files: cannot remove the partial file {path}: {why}", files_event="storage-error",
                                   path=path, why=str(e))
                    continue
                removed.append(path)
                self.events["part-expired"] += 1
                self.log.info("files: removed the partial file {path}, untouched for {lifetime:g}s",
                              files_event="part-expired", path=path, lifetime=self.part_lifetime)
            return removed

        return self.runInThread(self.store.parts).addCallback(expire)

    def startTransfer(self):
        if self.active >= self.max_transfers:
            return False
        self.active += 1
        return True

    def endTransfer(self):
        self.active -= 1
