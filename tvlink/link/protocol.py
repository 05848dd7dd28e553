"""
The link protocol: one persistent duplex connection, the same code on
the platform and on the payment side.

A L{LinkProtocol} frames messages (L{tvlink.link.wire}), keeps the link
alive (L{tvlink.link.idle.IdleTimeout}), matches answers to the requests
it sent (L{tvlink.link.pending.PendingRequests}), hands the requests it
receives to the factory's handler (L{tvlink.link.responder.Responder}) and
stops reading from a peer that does not read (L{tvlink.link.flow}). Its
factory is a L{tvlink.link.factory.LinkFactory}; what differs between the
roles lives there.
"""

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from tvlink.errors import CodecError, HeaderRejected, LinkBusy, LinkLost, LinkNotReady, ProtocolViolation
from tvlink.link import wire
from tvlink.link.flow import BACKLOG, Backpressure
from tvlink.link.heartbeat import Heartbeat, Rejections
from tvlink.link.idle import IdleTimeout
from tvlink.link.pending import PendingRequests
from tvlink.link.responder import Responder
from tvlink.link.settings import succeedWith


class LinkProtocol(Responder, Rejections, Heartbeat, Backpressure, Protocol, IdleTimeout):
    """
    One link, either role.

    @ivar state: C{"up"} once connected, C{"ready"} once signed on,
        C{"closing"}, then C{"lost"}.
    @ivar peer: the peer's C{host:port}.
    """

    log = Logger()

    state = "connecting"
    peer = "?"
    violation = None
    signedOff = False
    closeReason = None
    _outbox = None
    _now = 0.0

    def connectionMade(self):
        settings = self.factory.settings
        self.settings = settings
        self.heartbeat = settings.heartbeat
        self.idleTimeout = settings.idle_timeout
        self.frameTimeout = settings.frame_timeout
        self.closeTimeout = settings.close_timeout
        self._header = settings.header
        codec = self._codec = self.factory.codec or settings.codec
        self._encode, self._decode = getattr(codec, "raw", (codec.encode, codec.decode))
        self._clock = self.clock
        self._decoder = wire.FrameDecoder(settings.header, settings.max_frame)
        self._maxFrame = self._decoder.maxFrame
        self._maxBatch = settings.max_batch
        self._releaseStan = settings.stans.release
        self._maxInFlight = settings.max_in_flight
        self._maxHandling = settings.max_handling
        self.pending = PendingRequests(self._clock, self._requestTimedOut, settings.stans.release)
        self.proven = False
        self.connectedAt = self.clock.seconds()
        self.counters = self.factory.countersFor(self)
        self.roundTrips = self.factory.roundTripsFor(self)
        self._now = self.connectedAt
        peer = self.transport.getPeer()
        self.peer = "%s:%s" % (getattr(peer, "host", peer), getattr(peer, "port", ""))
        # Frames leave as soon as they are written: a request or answer is
        # never held back waiting for the peer to acknowledge the last one.
        noDelay = getattr(self.transport, "setTcpNoDelay", None)
        if noDelay is not None:
            try:
                noDelay(True)
            except OSError:
                pass
        self.state = "up"
        if self.backpressureAtConnect:
            self.watchBackpressure()
        self.startIdle()
        self.log.info(
            "link {peer} up ({role})", link_event="up", peer=self.peer, role=self.factory.role
        )
        self.factory.linkUp(self)

    @property
    def lastFrameIn(self):
        return self._lastRead

    @property
    def lastFrameOut(self):
        return self._lastWrite

    @property
    def ready(self):
        return self.state == "ready"

    def inFlight(self):
        return len(self.pending)

    @property
    def backlog(self):
        """
        The number of frames read and waiting for their turn.
        """
        return len(self._backlog) if self._backlog else 0

    # -- inbound --------------------------------------------------------

    def dataReceived(self, data):
        try:
            bodies = self._decoder.feed(data)
        except ProtocolViolation as violation:
            self._streamBroken(violation)
            return
        now = self._now = self._clock.seconds()
        if bodies:
            self._lastRead = now
            self.counters["framesIn"] += len(bodies)
            if not self.proven:
                self.proven = True
                self.factory.linkProven(self)
            if self._backlog:
                self._backlog.extend(bodies)
            else:
                self._handleFrames(bodies)
            if self._decoder.broken is not None and self._streamBroken(self._decoder.broken):
                return
        self.notePartial(self._decoder.partial, now, bool(bodies))

    def _streamBroken(self, violation):
        """
        The framing broke: a violation, once the frames read before it have
        had their turn. C{True} if the link was closed now.
        """
        if self._backlog:
            self._broken = violation
            return False
        self.protocolViolation(str(violation))
        return True

    _backlog = None
    _backlogCall = None
    _broken = None

    def _handleFrames(self, bodies):
        """
        Handle at most C{max_batch} of C{bodies} now and the rest on later
        reactor turns, reading nothing more from the peer meanwhile. What a
        batch writes leaves in one write at its end, so the peer starts on
        it while the rest is handled; and one busy link cannot hold the
        reactor from the others.
        """
        limit = self._maxBatch
        if len(bodies) > limit:
            self._handleBatch(bodies[:limit])
            if self.state != "lost":
                self._backlog = bodies[limit:]
                self._pauseReading(BACKLOG)
                self._backlogCall = self._clock.callLater(0, self._handleBacklog)
        else:
            self._handleBatch(bodies)

    def _handleBatch(self, bodies):
        """
        Handle C{bodies}; answers written meanwhile leave in one write, and
        the requests they answer are accounted for once.

        An answer to one of our requests, the common frame on a busy link,
        is matched here; every other message goes to L{messageReceived},
        which hands back the request an unusual answer is for.
        """
        self._outbox = outbox = []
        rtts = []
        entries = self.pending.entries
        decode = self._decode
        release = self._releaseStan
        counters = self.counters
        now = self._now
        try:
            for body in bodies:
                if not body:
                    counters["heartbeatsIn"] += 1
                    continue
                try:
                    message = decode(body)
                except HeaderRejected as rejected:
                    self.headerRejected(rejected)
                    continue
                except ProtocolViolation as violation:
                    self.protocolViolation(str(violation))
                    return
                except CodecError as e:
                    self.formatError(body, str(e))
                    continue
                except (ValueError, RecursionError) as e:
                    self.formatError(body, "body is not UTF-8 JSON: %s" % (e,))
                    continue
                try:
                    mti = message["mti"]
                    entry = entries.pop(
                        (message["sender"], message["stan"], message["time"]), None
                    ) if mti in _RESPONSES else None
                except Exception:
                    # Not a well-formed message: messageReceived says why.
                    mti = entry = None
                if entry is None:
                    if type(mti) is str and mti in _REQUESTS:
                        # A request of a kind WIRE.md names: requestReceived
                        # checks the rest of it.
                        self.requestReceived(message)
                    else:
                        entry = self.messageReceived(message, body)
                    if entry is None:
                        if self.state == "lost":
                            return
                        continue
                d, seq, sentAt, timeout, stan = entry
                if stan is not None:
                    release(stan)
                counters["answered"] += 1
                rtts.append(now - sentAt)
                d.callback(message)
                if self.state == "lost":
                    return
        finally:
            try:
                if rtts:
                    # Requests this lets go (room freed) join the write.
                    self._answered(rtts)
            finally:
                self._outbox = None
                if outbox and self.state != "lost":
                    self.transport.write(b"".join(outbox))
                    counters["framesOut"] += len(outbox)

    def _handleBacklog(self):
        self._backlogCall = None
        backlog, self._backlog = self._backlog, None
        if backlog and self.state != "lost":
            self._now = self._clock.seconds()
            self._handleFrames(backlog)
        if self._backlog is None and self.state != "lost":
            self._resumeReading(BACKLOG)
            if self._broken is not None:
                broken, self._broken = self._broken, None
                self.protocolViolation(str(broken))

    def messageReceived(self, message, body):
        """
        One decoded frame body of the batch being handled, other than an
        answer the batch matched itself or a request of a kind WIRE.md
        names (which the batch hands to L{requestReceived} itself): another
        request goes to L{requestReceived}, a late response to the
        late-response hook, anything else is a format error.

        @return: the pending entry of the request it answers, for the batch
            to settle, or C{None} once it has dealt with the message.
        """
        if type(message) is not dict:
            self.formatError(body, "body is JSON but not an object")
            return None
        mti = message.get("mti")
        if type(mti) is not str or (
            mti not in _RESPONSES and not (len(mti) == 4 and mti[2] in _ODD and mti.isdigit())
        ):
            self.requestReceived(message)
            return None
        key = (message.get("sender"), message.get("stan"), message.get("time"))
        try:
            entry = self.pending.entries.pop(key, None)
        except TypeError:
            # Part of the key is a JSON array or object.
            entry = None
        if entry is None:
            if type(key[0]) is not str or type(key[1]) is not str:
                self.formatError(message, "response lacks a sender or stan")
                return None
            self.counters["late"] += 1
            self.factory.lateResponse(self, key, message)
        return entry

    def _answered(self, rtts):
        """
        A batch of frames answered requests taking C{rtts} seconds each.
        """
        self.pending.settle()
        self.roundTrips.extend(rtts)
        self.factory.requestsAnswered(self, rtts)

    def protocolViolation(self, reason):
        """
        The peer broke framing: log, count, close.
        """
        if self.violation is not None:
            return
        self.violation = reason
        self.log.warn(
            "protocol violation from {peer}: {reason}; closing the link",
            link_event="violation",
            peer=self.peer,
            reason=reason,
        )
        self.factory.violationReceived(self, reason)
        self.close("protocol violation: " + reason)

    # -- outbound -------------------------------------------------------

    def _send(self, message, now):
        """
        Encode, frame and write C{message} at C{now}: into the batch's
        single write while a batch of frames is being handled, else at
        once. Nothing is written when it raises.

        @raise CodecError: if it cannot be encoded or is too big.
        """
        try:
            body = self._encode(message)
        except (TypeError, ValueError) as e:
            raise CodecError("message cannot be encoded as JSON: %s" % (e,)) from None
        length = len(body)
        if length > self._maxFrame:
            raise CodecError(
                "message of %d bytes exceeds the maximum frame of %d" % (length, self._maxFrame)
            )
        frame = self._header.encode(length) + body
        outbox = self._outbox
        if outbox is not None:
            # Counted when the batch's write leaves.
            outbox.append(frame)
        else:
            self.transport.write(frame)
            self.counters["framesOut"] += 1
        self._lastWrite = now

    def sendMessage(self, message):
        """
        Encode and write C{message}; written with the rest of the batch
        when called while a batch of frames is being handled.

        @raise CodecError: if it cannot be encoded or is too big.
        """
        self._send(message, self._now if self._outbox is not None else self._clock.seconds())

    def request(self, message, timeout=None, stan=None):
        """
        Send request C{message}; return a L{Deferred} firing with the
        answer C{dict}, or failing with L{RequestTimeout} after C{timeout}
        seconds (default: the settings' C{timeout}) or L{LinkLost}.

        C{sender}, C{stan} and C{time} are filled in when missing (the
        caller's dict is not changed). C{stan}, if given, is a STAN the
        caller allocated for C{message}: it is released when the request
        ends.

        @raise LinkNotReady: if the link is not signed on (sign-on and
            echo requests excepted).
        @raise LinkBusy: if C{max_in_flight} requests are in flight on it.
        @raise DuplicateKey: if the same key is already in flight.
        @raise CodecError: if the message cannot be encoded or is too big.
        """
        own = None
        if stan is None and ("stan" not in message or "time" not in message or "sender" not in message):
            message, own = self.settings.stamp(message)
            stan = own
        try:
            return self.sendRequest(
                message, (message["sender"], message["stan"], message["time"]), timeout, stan
            )
        except BaseException:
            # Not sent: a caller's STAN stays the caller's.
            if own is not None:
                self._releaseStan(own)
            raise

    def sendRequest(self, message, key, timeout=None, stan=None):
        """
        L{request} for a C{message} that already has its C{sender}, C{stan}
        and C{time}, making up C{key}. Nothing is left behind when it
        raises: C{stan} is then still the caller's.
        """
        state = self.state
        if state != "ready" and not (state == "up" and message.get("mti") == "0800"):
            raise LinkNotReady("link %s is %s, not ready" % (self.peer, state))
        pending = self.pending
        if len(pending.entries) >= self._maxInFlight:
            raise LinkBusy(
                "link %s already has %d requests in flight (its limit)"
                % (self.peer, len(pending.entries))
            )
        now = self._now if self._outbox is not None else self._clock.seconds()
        d = pending.add(key, self.settings.timeout if timeout is None else timeout, now, stan)
        try:
            self._send(message, now)
        except BaseException:
            # Not sent: nothing is left behind, and C{stan} is still the
            # caller's.
            pending.discard(key)
            raise
        self.counters["requestsOut"] += 1
        return d

    def _requestTimedOut(self, key):
        self.counters["timedOut"] += 1
        self.factory.requestTimedOut(self, key)

    # -- state ----------------------------------------------------------

    def becomeReady(self):
        self.state = "ready"
        self.log.info(
            "link {peer} ready ({role})", link_event="ready", peer=self.peer, role=self.factory.role
        )
        self.factory.linkReady(self)

    def readIdle(self, silence):
        self.log.warn(
            "link {peer} heard nothing for {silence:.1f}s; declaring it dead",
            link_event="heartbeat-timeout",
            peer=self.peer,
            silence=silence,
        )
        self.close("read-idle for %.1fs" % (silence,))

    def frameTimedOut(self, elapsed):
        self.protocolViolation("frame incomplete after %.1fs" % (elapsed,))

    def closeAborted(self):
        self.log.warn("link {peer} did not close in time; aborting", peer=self.peer)

    def close(self, why="closed locally"):
        """
        Close the link. Pending requests fail with L{LinkLost} when it is
        gone.
        """
        if self.state in ("closing", "lost"):
            return
        wasReady = self.state == "ready"
        self.state = "closing"
        self.closeReason = why
        if wasReady:
            self.factory.linkNotReady(self)
        if self._watching:
            # A TLS transport will not shut down while a producer is
            # registered.
            self._watching = False
            self.transport.unregisterProducer()
            self.resumeProducing()
        self.closeLink()

    def whenLost(self):
        """
        A L{Deferred} that fires (with the reason text) once the link is
        gone.
        """
        if self.state == "lost":
            return succeedWith(self.closeReason)
        d = Deferred()
        self.__dict__.setdefault("_lostWaiters", []).append(d)
        return d

    def connectionLost(self, reason):
        self.stopIdle()
        if self._pausedCall is not None and self._pausedCall.active():
            self._pausedCall.cancel()
        self._pausedCall = None
        wasReady = self.state == "ready"
        self.state = "closing"
        if wasReady:
            self.factory.linkNotReady(self)
        backlog, self._backlog = self._backlog, None
        if backlog:
            # Answers that came before the link went still count; requests
            # are not handled (the link is closing).
            if self._backlogCall is not None and self._backlogCall.active():
                self._backlogCall.cancel()
            self._backlogCall = None
            self._handleBatch(backlog)
        self.state = "lost"
        why = self.closeReason = self.closeReason or reason.getErrorMessage()
        self.log.info(
            "link {peer} lost: {why}", link_event="lost", peer=self.peer, why=why
        )
        self.pending.failAll(LinkLost("link %s lost before the answer came: %s" % (self.peer, why)))
        self.factory.linkLost(self, why)
        for d in self.__dict__.pop("_lostWaiters", ()):
            d.callback(why)


_ODD = frozenset("13579")
_RESPONSES = wire.RESPONSE_MTIS
_REQUESTS = wire.REQUEST_MTIS
