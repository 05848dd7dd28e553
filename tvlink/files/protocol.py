"""
The file exchange both ends of the files port speak: one short
connection per transfer, on the link's framing (L{tvlink.link.wire}),
control messages as JSON objects, file data as plain frame bodies.

What the messages are and in which order they come is in
docs/protocol.rst, "File transfer". This module holds what both ends
share: the message names and answer codes, the data phase in each
direction (L{FrameSender}, a pull producer like Twisted's C{FileSender}
that frames what it reads; L{Receiving}, which hashes and writes what
arrives), and the two deadlines of every transfer (L{Deadlines}).
"""

import os

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from tvlink.errors import CodecError, ProtocolViolation, TVLinkError
from tvlink.link import wire

# Requests, the first message on a connection.
LIST = "list"
GET = "get"
PUT = "put"
REQUESTS = (LIST, GET, PUT)
# Answers and the client's last word on a download.
FILES = "files"
READY = "ready"
STORED = "stored"
RECEIVED = "received"
REFUSED = "refused"

# Answer codes (docs/protocol.rst).
OK = wire.APPROVED
NOT_ALLOWED = wire.INVALID_TRANSACTION
BAD_SIZE = wire.INVALID_AMOUNT
NOT_FOUND = wire.ORIGINAL_NOT_FOUND
FORMAT_ERROR = wire.FORMAT_ERROR
BUSY = wire.DESTINATION_UNAVAILABLE
STORAGE_ERROR = wire.SYSTEM_MALFUNCTION
#: The data received does not have the announced size and SHA-256.
CORRUPT = "E1"

#: Bytes one call of L{FrameSender.resumeProducing} frames at most.
BURST = 256 * 1024

class TransferError(TVLinkError):
    """
    A transfer did not end as asked; C{resp} is the answer code (or
    C{None} when the connection failed), C{reason} the words for it.
    """

    def __init__(self, reason, resp=None):
        TVLinkError.__init__(self, reason)
        self.reason = reason
        self.resp = resp


class Refused(TransferError):
    """
    The server refused the request (name, size, limits, no such file).
    """


class Corrupt(TransferError):
    """
    The data received does not have the announced size and SHA-256; it
    was not renamed into place.
    """

    def __init__(self, reason):
        TransferError.__init__(self, reason, CORRUPT)


class ConnectionCut(TransferError):
    """
    The connection ended (or timed out) before the transfer was over;
    the next try resumes from what was received.
    """


def sizeText(value):
    """
    A size or offset as the messages carry it: decimal digits.
    """
    return "%d" % (value,)


def parseSize(value, what):
    """
    A size or offset from a message: a string of at most 15 decimal
    digits, as an int.

    @raise ValueError: naming C{what} otherwise.
    """
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15):
        raise ValueError("%s must be a string of decimal digits, not %r" % (what, value))
    return int(value)


def isDigest(value):
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class Deadlines:
    """
    The two clocks of one transfer: C{idle} seconds without progress (a
    byte in, or a chunk out), and C{total} seconds from the start, which
    nothing a peer sends can move. C{expired(why)} is called once, with
    words for which ran out.
    """

    def __init__(self, clock, expired, idle, total):
        self.clock = clock
        self.expired = expired
        self.idle = idle
        self.total = total
        self.lastActivity = None
        self._idleCall = None
        self._totalCall = None

    def start(self):
        self.lastActivity = self.clock.seconds()
        self._idleCall = self.clock.callLater(self.idle, self._idleDue)
        self._totalCall = self.clock.callLater(self.total, self._expire, "not done within %gs" % (self.total,))

    def touch(self):
        """
        Progress: the idle clock starts again (no timer is moved here).
        """
        self.lastActivity = self.clock.seconds()

    def _idleDue(self):
        self._idleCall = None
        quiet = self.clock.seconds() - self.lastActivity
        if quiet >= self.idle:
            self._expire("idle for %gs" % (self.idle,))
        else:
            self._idleCall = self.clock.callLater(self.idle - quiet, self._idleDue)

    def _expire(self, why):
        self.stop()
        self.expired(why)

    def stop(self):
        for name in ("_idleCall", "_totalCall"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()


@implementer(IPullProducer)
class FrameSender:
    """
    Send C{remaining} bytes of the open file C{f}, from where it stands,
    as frames of at most C{chunk} bytes under C{header}: a pull producer
    registered with the transport, so a chunk is read only when the
    transport has written the last ones (flat memory for any size).

    @ivar sent: bytes sent so far.
    """

    def __init__(self, f, remaining, header, chunk, progress=None):
        self.file = f
        self.remaining = remaining
        self.header = header
        self.chunk = chunk
        self.progress = progress
        self.sent = 0
        self.consumer = None
        self.deferred = None

    def beginTransfer(self, consumer):
        """
        Start sending to C{consumer}; a L{Deferred} firing with the bytes
        sent once all are written, or failing if the file runs short.
        """
        self.consumer = consumer
        d = self.deferred = Deferred()
        # A transport may ask for the first chunks (and, for a small file,
        # get them all) before registerProducer returns.
        consumer.registerProducer(self, False)
        return d

    def resumeProducing(self):
        if self.consumer is None:
            return
        frames = []
        burst = 0
        while self.remaining > 0 and burst < BURST:
            piece = self.file.read(min(self.chunk, self.remaining))
            if not piece:
                self._finish(IOError("the file ended %d bytes before its announced size" % (self.remaining,)))
                return
            frames.append(self.header.encode(len(piece)))
            frames.append(piece)
            self.remaining -= len(piece)
            burst += len(piece)
        if frames:
            self.consumer.writeSequence(frames)
            self.sent += burst
            if self.progress is not None:
                self.progress(burst)
        if self.remaining == 0:
            self._finish(None)

    def _finish(self, error):
        consumer, self.consumer = self.consumer, None
        if consumer is None:
            return
        consumer.unregisterProducer()
        d, self.deferred = self.deferred, None
        if error is None:
            d.callback(self.sent)
        else:
            d.errback(error)

    def stopProducing(self):
        """
        The connection went away: stop, failing the transfer.
        """
        if self.consumer is not None:
            self.consumer = None
            d, self.deferred = self.deferred, None
            d.errback(ConnectionCut("the connection closed after %d bytes" % (self.sent,)))


class Receiving:
    """
    The data phase on the receiving end: C{remaining} bytes to write to
    the open file C{f}, each hashed into C{digest} (which already holds
    what an earlier try received).
    """

    def __init__(self, f, digest, remaining, progress=None):
        self.file = f
        self.digest = digest
        self.remaining = remaining
        self.progress = progress
        self.received = 0

    def write(self, data):
        """
        Write one frame body.

        @raise ProtocolViolation: if it goes past the announced size.
        """
        if len(data) > self.remaining:
            raise ProtocolViolation("%d bytes of data past the announced size" % (len(data) - self.remaining,))
        self.file.write(data)
        self.digest.update(data)
        self.remaining -= len(data)
        self.received += len(data)
        if self.progress is not None:
            self.progress(len(data))

    @property
    def done(self):
        return self.remaining == 0

    def close(self):
        """
        Put what was written on disk and close the file; the SHA-256 of
        everything received (earlier tries included), in hex.
        """
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.digest.hexdigest()


class FileExchange(Protocol):
    """
    One connection of the files port, either end: frames in and out,
    JSON messages, the data phase, and the deadlines.

    A subclass implements C{messageReceived(message)} and
    C{dataComplete()} (the last byte of a L{startReceiving} phase came),
    and sets C{idle} and C{total} seconds before C{connectionMade}.
    """

    log = Logger(namespace="tvlink.files")

    peer = "?"
    receiving = None
    sending = None
    finished = False
    closeReason = None

    def connectionMade(self):
        settings = self.settings
        self.header = settings.header
        self.chunk = wire.effectiveMaxFrame(settings.header, settings.max_frame)
        self.decoder = wire.FrameDecoder(settings.header, settings.max_frame)
        self.codec = wire.JSONCodec()
        peer = self.transport.getPeer()
        self.peer = "%s:%s" % (getattr(peer, "host", peer), getattr(peer, "port", ""))
        self.deadlines = Deadlines(self.clock, self.timedOut, self.idle, self.total)
        self.deadlines.start()

    def dataReceived(self, data):
        if self.finished:
            return
        self.deadlines.touch()
        try:
            bodies = self.decoder.feed(data)
            for body in bodies:
                if self.finished:
                    return
                receiving = self.receiving
                if receiving is not None:
                    receiving.write(body)
                    if receiving.done:
                        self.receiving = None
                        self.dataComplete(receiving)
                elif body:
                    try:
                        message = self.codec.decode(body)
                    except CodecError as e:
                        self.formatError(str(e))
                        return
                    self.messageReceived(message)
        except ProtocolViolation as violation:
            self.protocolError(str(violation))
        except OSError as e:
            self.storageError(e)

    def sendMessage(self, message):
        self.transport.write(wire.encodeFrame(self.header, self.codec.encode(message)))

    def startReceiving(self, f, digest, remaining, progress=None):
        """
        The next C{remaining} bytes of frame data go to C{f}.
        """
        self.receiving = Receiving(f, digest, remaining, progress)
        if remaining == 0:
            receiving, self.receiving = self.receiving, None
            self.dataComplete(receiving)

    def sendData(self, f, remaining, progress=None):
        """
        Send C{remaining} bytes of C{f} as data frames; a L{Deferred} of
        the bytes sent.
        """
        self.sending = FrameSender(f, remaining, self.header, self.chunk, self._sent(progress))
        return self.sending.beginTransfer(self.transport)

    def _sent(self, progress):
        def sent(count):
            self.deadlines.touch()
            if progress is not None:
                progress(count)

        return sent

    def finish(self, reason=None):
        """
        The exchange is over: stop the deadlines and close.
        """
        if self.finished:
            return
        self.finished = True
        self.closeReason = reason
        self.deadlines.stop()
        self.transport.loseConnection()

    def abort(self, reason):
        if self.finished and self.closeReason is not None:
            return
        self.finished = True
        self.closeReason = reason
        self.deadlines.stop()
        self.transport.abortConnection()

    def logged(self, event):
        """
        The exchange logged the C{files_event} C{event} (the server counts
        them for its metrics).
        """

    def timedOut(self, why):
        self.logged("timeout")
        self.log.warn(
            "files: transfer with {peer} dropped: {why}",
            files_event="timeout",
            peer=self.peer,
            why=why,
        )
        self.abort(why)

    def protocolError(self, why):
        self.logged("violation")
        self.log.warn("files: {peer} broke the exchange: {why}", files_event="violation", peer=self.peer, why=why)
        self.abort(why)

    def formatError(self, why):
        self.protocolError(why)

    def storageError(self, error):
        """
        Reading or writing a local file failed in the middle of the
        exchange.
        """
        self.logged("storage-error")
        self.log.error(
            "files: transfer with {peer} stopped: cannot read or write the file: {why}",
            files_event="storage-error",
            peer=self.peer,
            why=str(error),
        )
        self.abort(str(error))

    def connectionLost(self, reason):
        self.deadlines.stop()
        if not self.finished:
            self.finished = True
            self.closeReason = "the peer closed the connection"
