"""
The platform's end of the file service: L{FileClient} lists, downloads
and uploads the files of one sender institution, one short connection
per call, each a L{Deferred}.

A download is written to C{DEST.part} (with what it is a part of in
C{DEST.part.json}) and renamed to C{DEST} once its size and SHA-256 are
right; a download that is cut off resumes from the bytes of C{DEST.part}
on the next call, if the file on the server is still the same.
"""

import hashlib
import json
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.logger import Logger

from tvlink.files import protocol as fp
from tvlink.files.digests import hashPrefix, inThreadPool
from tvlink.files.names import checkName, checkSender, renameIntoPlace
from tvlink.link.settings import LinkSettings, globalReactor, positive


def _readPart(dest):
    """
    C{(bytes already in DEST.part, the SHA-256 of the file it is a part
    of)}, or C{(0, None)}.
    """
    try:
        with open(dest + ".part.json") as f:
            meta = json.load(f)
        have = os.path.getsize(dest + ".part")
    except (OSError, ValueError):
        return 0, None
    digest = meta.get("sha256") if isinstance(meta, dict) else None
    if not fp.isDigest(digest):
        return 0, None
    return have, digest


def _openNoLink(path, mode, truncate):
    """
    Open C{path} for writing (made if need be, emptied when C{truncate})
    without following a link planted there.
    """
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_TRUNC if truncate else 0)
    return os.fdopen(os.open(path, flags, 0o666), mode)


def _words(text):
    """
    The server's C{text} (a reason, an answer code) fit for a log or a
    terminal: as it is if it is printable, quoted otherwise.
    """
    return text if isinstance(text, str) and text.isprintable() else repr(text)


def _mtime(text):
    """
    C{text} if it is a listing's C{YYYYMMDDhhmmss}.

    @raise ValueError: otherwise.
    """
    if not (isinstance(text, str) and len(text) == 14 and text.isascii() and text.isdigit()):
        raise ValueError("mtime must be YYYYMMDDhhmmss, not %r" % (text,))
    return text


#: The answers each request may get (besides C{refused}).
ANSWERS = {fp.LIST: (fp.FILES,), fp.GET: (fp.READY,), fp.PUT: (fp.READY, fp.STORED)}


class FileClientProtocol(fp.FileExchange):
    """
    The client's end of one exchange; C{result} fires with what it came
    to, or fails with a L{tvlink.files.protocol.TransferError}.
    """

    log = Logger(namespace="tvlink.files")

    def __init__(self, client, request, progress=None, upload=None, part=None):
        """
        @param upload: C{(open file, size, sha256)} of the file a C{put}
            sends.
        @param part: C{(dest, bytes in DEST.part, their hash, the SHA-256
            they are a part of)} for a C{get}.
        """
        self.client = client
        self.request = request
        self.progressed = progress
        self.result = Deferred()
        self.settings, self.clock = client.settings, client.reactor
        self.idle, self.total = client.idle, client.total
        self.outcome = None
        self.file = None
        if upload is not None:
            self.file, self.size, self.digest = upload
        if part is not None:
            self.dest, self.have, self.prefix, self.partDigest = part

    def connectionMade(self):
        fp.FileExchange.connectionMade(self)
        self.sendMessage(self.request)

    def progress(self, count):
        self.done += count
        if self.progressed is not None:
            self.progressed(self.done, self.size)

    def messageReceived(self, message):
        op, resp = message.get("op"), message.get("resp")
        if op == fp.REFUSED:
            return self.fail(fp.Refused("%s (%s)" % (_words(message.get("reason")), _words(resp)), resp))
        handler = {fp.FILES: self.listed, fp.READY: self.ready, fp.STORED: self.stored}.get(op)
        if op not in ANSWERS[self.request["op"]] or resp != fp.OK and op != fp.STORED:
            return self.protocolError("unexpected answer %r %r to a %s" % (op, resp, self.request["op"]))
        try:
            handler(message)
        except OSError as e:
            self.storageError(e)
        except (ValueError, KeyError, TypeError) as e:
            self.protocolError("bad %s answer: %s" % (op, e))

    def listed(self, message):
        entries = [
            {"name": checkName(f["name"]), "size": fp.parseSize(f["size"], "size"), "mtime": _mtime(f["mtime"])}
            for f in message["files"]
        ]
        if "more" in message:
            self.log.warn(
                "files: the listing of {sender} holds {more} more files than fit in one frame",
                files_event="listing-cut",
                sender=self.request["sender"],
                more=message["more"],
            )
        self.succeed(entries)

    def ready(self, message):
        offset = fp.parseSize(message["offset"], "offset")
        if self.request["op"] == fp.PUT:
            self.startSending(offset)
        else:
            self.startFetching(message, offset)

    def startSending(self, offset):
        if offset > self.size:
            raise ValueError("offset %d past the size %d" % (offset, self.size))
        self.offset = self.done = offset
        self.file.seek(offset)
        d = self.sendData(self.file, self.size - offset, self.progress)
        d.addErrback(lambda failure: None if failure.check(fp.ConnectionCut) else self.fail(failure.value))

    def stored(self, message):
        if message.get("resp") == fp.CORRUPT:
            return self.fail(fp.Corrupt(_words(message.get("reason", "corrupt"))))
        if message.get("resp") != fp.OK:
            resp = message.get("resp")
            return self.fail(fp.Refused("%s (%s)" % (_words(message.get("reason")), _words(resp)), resp))
        self.succeed({"name": self.request["name"], "size": self.size, "sha256": self.digest, "resumed": self.offset})

    def startFetching(self, message, offset):
        size = fp.parseSize(message["size"], "size")
        digest = message["sha256"]
        if not fp.isDigest(digest):
            raise ValueError("sha256 %r" % (digest,))
        dest = self.dest
        if offset == 0:
            prefix = hashlib.sha256()
            self.file = _openNoLink(dest + ".part", "r+b", truncate=True)
            with _openNoLink(dest + ".part.json", "w", truncate=True) as f:
                json.dump({"name": self.request["name"], "sha256": digest, "size": size}, f)
        elif self.prefix is not None and offset == self.have and digest == self.partDigest:
            prefix = self.prefix
            self.file = _openNoLink(dest + ".part", "r+b", truncate=False)
            self.file.seek(offset)
            self.file.truncate(offset)
        else:
            raise ValueError("offset %d was not asked for" % (offset,))
        self.size, self.digest, self.offset, self.done = size, digest, offset, offset
        self.startReceiving(self.file, prefix, size - offset, self.progress)

    def dataComplete(self, receiving):
        self.file = None
        got = receiving.close()
        if got != self.digest:
            os.remove(self.dest + ".part")
            os.remove(self.dest + ".part.json")
            reason = "SHA-256 of the %d bytes received is %s, not %s" % (self.size, got, self.digest)
            self.sendMessage({"op": fp.RECEIVED, "resp": fp.CORRUPT, "reason": reason})
            self.finish(reason)
            return self.fail(fp.Corrupt(reason))
        renameIntoPlace(self.dest + ".part", self.dest)
        os.remove(self.dest + ".part.json")
        self.sendMessage({"op": fp.RECEIVED, "resp": fp.OK})
        self.finish()
        self.succeed({"name": self.request["name"], "size": self.size, "sha256": got, "resumed": self.offset})

    def succeed(self, value):
        self.outcome = value
        self.finish()

    def fail(self, error):
        if self.outcome is None:
            self.outcome = error
        self.finish(str(error))

    def storageError(self, error):
        self.outcome = self.outcome or error
        fp.FileExchange.storageError(self, error)

    def timedOut(self, why):
        self.outcome = self.outcome or fp.ConnectionCut("the server was " + why)
        fp.FileExchange.timedOut(self, why)

    def protocolError(self, why):
        self.outcome = self.outcome or fp.TransferError("the server broke the exchange: " + why)
        fp.FileExchange.protocolError(self, why)

    def connectionLost(self, reason):
        fp.FileExchange.connectionLost(self, reason)
        if self.file is not None:
            self.file.close()
            self.file = None
        outcome = self.outcome
        if outcome is None:
            outcome = fp.ConnectionCut("the connection ended before the transfer did: %s" % (reason.getErrorMessage(),))
        if isinstance(outcome, Exception):
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)


class FileClient:
    """
    Talk to the file service at C{host}:C{port} as sender C{sender}.

    @param tls: a L{tvlink.link.tls.ClientTLS}, or C{None} for plain TCP.
    @param settings: the L{LinkSettings} whose framing to use (the link's
        C{header} and C{max_frame}, which the server must share).
    @param idle: seconds without progress before the transfer is given up.
    @param total: seconds a transfer may take in all.
    @param runInThread: runs the hashing of local files off the reactor.
    """

    def __init__(
        self,
        host,
        port,
        sender,
        tls=None,
        settings=None,
        reactor=None,
        idle=60.0,
        total=3600.0,
        connect_timeout=10.0,
        runInThread=None,
    ):
        if settings is None:
            settings = LinkSettings(reactor=reactor if reactor is not None else globalReactor(), sender=sender)
        self.settings = settings
        self.reactor = settings.reactor
        self.host, self.port = host, int(port)
        self.sender = checkSender(sender)
        self.tls = tls
        self.idle = positive("idle", idle)
        self.total = positive("total", total)
        self.connect_timeout = positive("connect_timeout", connect_timeout)
        self.runInThread = runInThread if runInThread is not None else inThreadPool(self.reactor)

    def _exchange(self, protocol):
        endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=self.connect_timeout)
        if self.tls is not None:
            endpoint = wrapClientTLS(self.tls.creatorFor(self.host), endpoint)
        d = connectProtocol(endpoint, protocol)

        def notConnected(failure):
            if protocol.file is not None:
                protocol.file.close()
            raise fp.ConnectionCut("cannot connect to %s:%d: %s" % (self.host, self.port, failure.getErrorMessage()))

        d.addCallbacks(lambda _: protocol.result, notConnected)
        return d

    def _request(self, op, **fields):
        return dict(fields, op=op, sender=self.sender)

    def list(self):
        """
        A L{Deferred} of the files of this sender on the server: C{dict}s
        with C{name}, C{size} and C{mtime} (C{YYYYMMDDhhmmss}, UTC).
        """
        return self._exchange(FileClientProtocol(self, self._request(fp.LIST)))

    def get(self, name, dest, progress=None):
        """
        Download C{name} to the path C{dest}, resuming from C{DEST.part}.

        @param progress: called with C{(bytes so far, size)} as data comes.
        @return: a L{Deferred} of C{{"name", "size", "sha256", "resumed"}}
            (C{resumed}: the bytes an earlier try had brought), failing
            with L{Refused}, L{Corrupt} or L{ConnectionCut}.
        """
        checkName(name)
        have, partDigest = _readPart(dest)
        d = self.runInThread(hashPrefix, dest + ".part", have) if have else succeed(None)

        def hashed(prefix):
            request = self._request(fp.GET, name=name, offset=fp.sizeText(have if prefix else 0))
            if prefix is not None:
                request["sha256"] = partDigest
            return self._exchange(FileClientProtocol(self, request, progress, part=(dest, have, prefix, partDigest)))

        return d.addCallback(hashed)

    def put(self, src, name, progress=None):
        """
        Upload the file at C{src} as C{name}; the server resumes a
        partial upload of the same content.

        @return: a L{Deferred} of C{{"name", "size", "sha256",
            "resumed"}}, failing as L{get} does.
        """
        checkName(name)
        f = open(src, "rb")
        size = os.fstat(f.fileno()).st_size

        def hashed(digest):
            request = self._request(fp.PUT, name=name, size=fp.sizeText(size), sha256=digest)
            return self._exchange(FileClientProtocol(self, request, progress, upload=(f, size, digest)))

        def failed(failure):
            f.close()
            return failure

        return self.runInThread(hashPrefix, src, size).addCallback(lambda h: hashed(h.hexdigest())).addErrback(failed)
