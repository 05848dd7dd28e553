"""
The link protocol: one persistent duplex connection, the same code on
the platform and on the payment side.

A L{LinkProtocol} frames messages (L{tvlink.link.wire}), keeps the link alive
(L{tvlink.link.idle.IdleTimeout}), matches answers to the requests it sent
(L{PendingRequests}) and hands the requests it receives to an
L{IMessageHandler}. Its factory is a L{LinkFactory}; what differs between
the roles lives there.
"""

import time
from heapq import heapify, heappop, heappush

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from tvlink.link import wire
from tvlink.errors import (
    CodecError,
    DuplicateKey,
    LinkBusy,
    LinkLost,
    LinkNotReady,
    ProtocolViolation,
    RequestTimeout,
)
from tvlink.link.idle import IdleTimeout
from tvlink.link.roundtrips import RoundTrips

PLATFORM = "platform"
PAYMENT = "payment"

#: What every link counts.
LINK_COUNTERS = (
    "framesIn",
    "framesOut",
    "heartbeatsIn",
    "heartbeatsOut",
    "requestsIn",
    "requestsOut",
    "answered",
    "timedOut",
    "late",
    "formatErrors",
)


class IMessageHandler(Interface):
    """
    Answers the requests that arrive on a link.
    """

    def handle(message):
        """
        Answer request C{message} (a C{dict}).

        @return: the answer C{dict} (at least C{resp}), or a L{Deferred}
            firing with it. The link fills in C{mti}, C{sender}, C{stan} and
            C{time} from the request. Raising, or failing the Deferred,
            answers C{96}.
        """


class LinkSettings:
    """
    What every link of one service shares: framing, timers, the local
    sender id and its STAN allocator, and the clock.

    Option names follow the command line (C{heartbeat}, C{idle_timeout},
    C{timeout}, C{header}, C{max_frame}, C{frame_timeout}, C{sender},
    C{max_in_flight}, C{max_handling}, C{max_batch}).

    C{max_batch} is how many frames a link handles in one turn of the
    reactor: what that batch writes leaves in one write before the next
    batch of the same read is handled, so the peer works on it meanwhile,
    and one busy link cannot hold the reactor from the others.
    """

    def __init__(
        self,
        reactor=None,
        heartbeat=60.0,
        idle_timeout=180.0,
        timeout=40.0,
        header="ascii4",
        max_frame=wire.DEFAULT_MAX_FRAME,
        frame_timeout=30.0,
        close_timeout=5.0,
        sender="00000000",
        codec=None,
        localtime=time.localtime,
        max_in_flight=1000,
        max_handling=1000,
        max_batch=12,
    ):
        self.reactor = reactor if reactor is not None else globalReactor()
        self.heartbeat = positive("heartbeat", heartbeat)
        self.idle_timeout = positive("idle_timeout", idle_timeout)
        self.timeout = positive("timeout", timeout)
        self.frame_timeout = positive("frame_timeout", frame_timeout)
        self.close_timeout = positive("close_timeout", close_timeout)
        self.header = wire.getHeader(header) if isinstance(header, str) else header
        if int(max_frame) < 1:
            raise ValueError("max_frame must be at least 1, not %r" % (max_frame,))
        self.max_frame = int(max_frame)
        if not isinstance(sender, str) or not sender or not sender.isascii():
            raise ValueError("sender must be a non-empty ASCII string, not %r" % (sender,))
        self.sender = sender
        self.codec = codec if codec is not None else wire.JSONCodec()
        self.max_in_flight = atLeast("max_in_flight", max_in_flight, 1)
        self.max_handling = atLeast("max_handling", max_handling, 1)
        self.max_batch = atLeast("max_batch", max_batch, 1)
        # Start where the clock says, so a restarted node does not walk the
        # STANs it used earlier in the day again straight away.
        self.stans = wire.StanAllocator(start=int(self.reactor.seconds() * 10) % wire.StanAllocator.modulus + 1)
        self.localtime = localtime

    _timeCache = (None, None)

    def transmissionTime(self):
        """
        The C{MMDDhhmmss} of now (formatted once per second).
        """
        second = int(self.reactor.seconds())
        cached, text = self._timeCache
        if cached != second:
            text = wire.formatTransmissionTime(second, self.localtime)
            self._timeCache = (second, text)
        return text

    def stamp(self, message):
        """
        Return a copy of C{message} with C{sender}, C{stan} and C{time}
        filled in where missing, and the STAN it allocated (or C{None}).
        The caller releases that STAN with C{self.stans.release} when the
        request is over.
        """
        message = dict(message)
        allocated = None
        if "sender" not in message:
            message["sender"] = self.sender
        if "stan" not in message:
            allocated = message["stan"] = self.stans.allocate()
        if "time" not in message:
            second, text = self._timeCache
            if second != int(self.reactor.seconds()):
                text = self.transmissionTime()
            message["time"] = text
        return message, allocated


def globalReactor():
    """
    The global reactor, imported only when a caller injected none.
    """
    import twisted.internet.reactor

    return twisted.internet.reactor


def atLeast(name, value, least):
    """
    C{value} as an int of at least C{least}, or a L{ValueError} naming
    C{name}.
    """
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("%s must be a whole number, not %r" % (name, value)) from None
    if number < least or number != value and not isinstance(value, str):
        raise ValueError("%s must be a whole number of at least %d, not %r" % (name, least, value))
    return number


class LimitLog:
    """
    Logs that a limit was hit without letting a flood flood the log: the
    first hit of each kind is logged at once, later ones as a count at
    most every C{interval} seconds.
    """

    log = Logger()
    interval = 10.0

    def __init__(self, clock):
        self.clock = clock
        self.hits = {}
        self._last = {}
        self._unlogged = {}
        self._flushes = {}

    def hit(self, limit, peer, detail):
        """
        The limit named C{limit} refused something from C{peer}.
        """
        self.hits[limit] = self.hits.get(limit, 0) + 1
        now = self.clock.seconds()
        last = self._last.get(limit)
        if last is not None and now - last < self.interval:
            self._unlogged[limit] = self._unlogged.get(limit, 0) + 1
            if limit not in self._flushes:
                # Whatever comes after this is reported when the interval
                # is over, even if nothing else is refused.
                self._flushes[limit] = self.clock.callLater(
                    last + self.interval - now, self._flush, limit, peer, detail
                )
            return
        self._report(limit, peer, detail, now)

    def _report(self, limit, peer, detail, now):
        self._last[limit] = now
        call = self._flushes.pop(limit, None)
        if call is not None and call.active():
            call.cancel()
        more = self._unlogged.pop(limit, 0)
        self.log.warn(
            "limit {limit} hit: refused {detail} from {peer}{more}",
            link_event="limit",
            limit=limit,
            detail=detail,
            peer=peer,
            more=" (and %d more refusals since the last report)" % (more,) if more else "",
        )

    def _flush(self, limit, peer, detail):
        self._flushes.pop(limit, None)
        more = self._unlogged.pop(limit, 0)
        if more:
            self._last[limit] = self.clock.seconds()
            self.log.warn(
                "limit {limit} hit: refused {count} more (the last: {detail} from {peer}) in {interval:g}s",
                link_event="limit",
                limit=limit,
                count=more,
                detail=detail,
                peer=peer,
                interval=self.interval,
            )

    def stop(self):
        """
        Cancel the pending reports.
        """
        flushes, self._flushes = self._flushes, {}
        for call in flushes.values():
            if call.active():
                call.cancel()


def positive(name, value):
    """
    C{value} as a positive float, or a L{ValueError} naming C{name}.
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError("%s must be a number of seconds, not %r" % (name, value)) from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("%s must be a positive number of seconds, not %r" % (name, value))
    return value


def _passOn(ignored, value):
    return value


def _chainMarker():
    """
    What this Twisted's L{Deferred} keeps in place of a callback where
    another L{Deferred} waits on it, or C{None} when its callbacks are not
    kept the way L{Reply}'s shortcut reads them: a list of C{(callback,
    errback)} pairs of C{(function, args, kwargs)}, beside the flags the
    shortcut sets.
    """
    try:
        d = Deferred()
        d.addCallbacks(_passOn, _passOn, (1,), None, (2,))
        [((callback, args, kwargs), (errback, eargs, ekwargs))] = d._callbacks
        if not (
            type(d._callbacks) is list
            and (callback, args, errback, eargs) == (_passOn, (1,), _passOn, (2,))
            and not kwargs
            and d._runningCallbacks is False
            and d._debugInfo is None
            and d.paused == 0
            and callable(d._runCallbacks)
        ):
            return None
        waiting, awaited = Deferred(), Deferred()
        waiting.addCallback(_passOn, awaited)
        waiting.callback(None)
        [((marker, args, kwargs), _)] = awaited._callbacks
        return marker if args == (waiting,) else None
    except Exception:
        return None


class Reply(Deferred):
    """
    The L{Deferred} of one request's answer: a L{Deferred} in every way.

    Firing it with an answer takes a short path when nothing about it is
    unusual, which is how nearly every request ends: the answer is a
    C{dict}, one callback pair was added, nothing is paused, debugged or
    fired already, and the callback returns C{None} without adding more.
    Whatever else happens (the callback raises, returns a value or a
    L{Deferred}, adds callbacks) is handed to L{Deferred}'s own machinery
    at the point the callback returned, so the outcome is the same as a
    plain L{Deferred}'s. On the platform side this saves about 2,600 of
    the some 65,000 instructions a pipelined request costs (see
    C{bench/README.rst}). It reads L{Deferred}'s private callback list, so
    it is used only when L{_chainMarker} finds that list as expected, and
    C{tests/test_reply.py} compares it with a plain L{Deferred} over
    generated callback chains.
    """

    def callback(self, result):
        callbacks = self._callbacks
        if (
            type(result) is not dict
            or len(callbacks) != 1
            or callbacks[0][0][0] is _CHAINED
            or self.called
            or self.paused
            or self.debug
            or self._debugInfo is not None
        ):
            Deferred.callback(self, result)
            return
        self.called = True
        self._canceller = None
        self.result = result
        (function, args, kwargs), _ = callbacks.pop()
        self._runningCallbacks = True
        try:
            value = function(result, *args, **kwargs)
        except BaseException:
            self._runningCallbacks = False
            self.result = Failure(captureVars=self.debug)
            self._runCallbacks()
            return
        self._runningCallbacks = False
        self.result = None
        if value is not None or callbacks:
            # Deferred carries on as if its loop had called the callback.
            callbacks.insert(0, ((_passOn, (value,), {}), (_passOn, (value,), {})))
            self._runCallbacks()


_CHAINED = _chainMarker()

#: What a request's answer is delivered through: L{Reply} unless this
#: Twisted keeps its callbacks differently.
_AnswerDeferred = Reply if _CHAINED is not None else Deferred


class PendingRequests:
    """
    The requests a link has sent and not yet had answered, by key.

    Each entry's Deferred has a canceller that removes the entry; an answer
    removes it too; its deadline fails it with L{RequestTimeout}. One timer
    serves the whole table (set for the earliest deadline, over a heap that
    is compacted as answers leave stale deadlines behind), so a request
    costs no timer of its own. No entry outlives its request.

    @ivar release: called with the STAN handed to L{add} when its request
        ends, however it ends.
    """

    def __init__(self, clock, onTimeout=None, release=None):
        self._clock = clock
        #: key -> (deferred, seq, sentAt, timeout, stan). The link's answer
        #: path takes entries out of it directly and calls L{settle} once
        #: per batch of frames.
        self.entries = {}
        self._heap = []
        self._seq = 0
        self._timer = None
        #: When the timer fires; infinity while there is none.
        self._timerAt = _NEVER
        self._onTimeout = onTimeout
        self._release = release
        self._emptyWaiters = []

    def __len__(self):
        return len(self.entries)

    def __contains__(self, key):
        return key in self.entries

    def add(self, key, timeout, now=None, stan=None):
        """
        Register a request sent at C{now}; return the L{Deferred} of its
        answer. C{stan}, if given, is released when the request ends.

        @raise DuplicateKey: if C{key} is already pending.
        """
        entries = self.entries
        if key in entries:
            raise DuplicateKey("request %s is already in flight" % ("/".join(map(str, key)),))
        if now is None:
            now = self._clock.seconds()
        d = _AnswerDeferred(lambda d: self._cancel(key))
        seq = self._seq = self._seq + 1
        deadline = now + timeout
        entries[key] = (d, seq, now, timeout, stan)
        heap = self._heap
        heappush(heap, (deadline, seq, key))
        if deadline < self._timerAt:
            timer = self._timer
            if timer is None:
                timer = self._timer = self._clock.callLater(timeout, self._expireDue)
            else:
                timer.reset(timeout)
            self._timerAt = timer.getTime()
        elif not seq & 63 and len(heap) > 2 * len(entries) + 64:
            # Answered requests leave their deadlines behind in the heap.
            self._compact()
        return d

    def pop(self, key):
        """
        Take the entry of C{key} out of the table, for an answer.

        @return: C{(deferred, sentAt)}, or C{None} if nothing was pending
            under C{key}.
        """
        entry = self.entries.pop(key, None)
        if entry is None:
            return None
        if entry[4] is not None:
            self._release(entry[4])
        self.settle()
        return entry[0], entry[2]

    def settle(self):
        """
        Entries were taken out of L{entries} directly: if none is left,
        stop the timer and tell the L{whenEmpty} waiters.
        """
        if not self.entries and (self._timer is not None or self._emptyWaiters):
            self._emptied()

    def resolve(self, key, answer):
        """
        Fire the request C{key} with C{answer}.

        @return: the time it was sent, or C{None} if nothing was pending
            under C{key}.
        """
        entry = self.pop(key)
        if entry is None:
            return None
        entry[0].callback(answer)
        return entry[1]

    def discard(self, key):
        """
        Forget C{key} without firing or releasing anything (it was never
        sent).
        """
        if self.entries.pop(key, None) is not None and not self.entries:
            self._emptied()

    def _cancel(self, key):
        entry = self.entries.pop(key, None)
        if entry is not None:
            if entry[4] is not None:
                self._release(entry[4])
            if not self.entries:
                self._emptied()

    def _compact(self):
        entries = self.entries
        self._heap = [(e[2] + e[3], e[1], k) for k, e in entries.items()]
        heapify(self._heap)

    def _expireDue(self):
        self._timer = None
        self._timerAt = _NEVER
        now = self._clock.seconds()
        heap = self._heap
        entries = self.entries
        expired = []
        while heap and heap[0][0] <= now:
            deadline, seq, key = heappop(heap)
            entry = entries.get(key)
            if entry is not None and entry[1] == seq:
                del entries[key]
                if entry[4] is not None:
                    self._release(entry[4])
                expired.append((key, entry))
        while heap:
            deadline, seq, key = heap[0]
            entry = entries.get(key)
            if entry is not None and entry[1] == seq:
                self._timer = self._clock.callLater(deadline - now, self._expireDue)
                self._timerAt = self._timer.getTime()
                break
            heappop(heap)
        for key, entry in expired:
            if self._onTimeout is not None:
                self._onTimeout(key)
            entry[0].errback(RequestTimeout(key, entry[3]))
        if expired and not entries:
            self._emptied()

    def failAll(self, reason):
        """
        Fail every pending request with exception C{reason}.
        """
        entries, self.entries = self.entries, {}
        self._heap = []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timerAt = _NEVER
        for d, seq, sentAt, timeout, stan in entries.values():
            if stan is not None:
                self._release(stan)
        for d, seq, sentAt, timeout, stan in entries.values():
            d.errback(Failure(reason))
        self._emptied()

    def whenEmpty(self):
        """
        A L{Deferred} that fires once nothing is pending.
        """
        if not self.entries:
            return succeedWith(None)
        d = Deferred(lambda d: self._emptyWaiters.remove(d))
        self._emptyWaiters.append(d)
        return d

    def _emptied(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timerAt = _NEVER
        self._heap = []
        if self._emptyWaiters:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)


class LinkProtocol(Protocol, IdleTimeout):
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
    handling = 0
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
        self._codec = settings.codec
        self._encode, self._decode = getattr(
            settings.codec, "raw", (settings.codec.encode, settings.codec.decode)
        )
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
                self._pauseReading(_BACKLOG)
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
                except (ValueError, RecursionError, CodecError) as e:
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
            self._resumeReading(_BACKLOG)
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

    def requestReceived(self, message):
        mti = message.get("mti")
        if not (
            type(mti) is str
            and len(mti) == 4
            and mti.isdigit()
            and type(message.get("sender")) is str
            and type(message.get("stan")) is str
            and type(message.get("time", "")) is str
        ):
            self.formatError(message, "message lacks a valid mti, sender or stan")
            return
        self.counters["requestsIn"] += 1
        state = self.state
        if mti == "0800":
            answer = self.networkManagement(message)
            if answer is None:
                self.formatError(message, "0800 without an nmi")
            else:
                self.answer(message, answer)
            return
        if state != "ready":
            if state in ("closing", "lost"):
                self.log.warn(
                    "request {mti} {key} from {peer} not handled: the link is {state}",
                    mti=mti,
                    key=_keyText(wire.messageKey(message)),
                    peer=self.peer,
                    state=state,
                )
                return
            if self.factory.requireSignOn:
                self.log.warn(
                    "request {mti} {key} from {peer} before sign-on; answering 91",
                    link_event="not-signed-on",
                    mti=mti,
                    key=_keyText(wire.messageKey(message)),
                    peer=self.peer,
                )
                self.answer(message, {"resp": wire.DESTINATION_UNAVAILABLE})
                return
        factory = self.factory
        if self.handling >= self._maxInFlight or factory.handling >= self._maxHandling:
            factory.limits.hit(
                "max-in-flight" if self.handling >= self._maxInFlight else "max-handling",
                self.peer,
                "request %s %s (answered 91)" % (mti, _keyText(wire.messageKey(message))),
            )
            self.answer(message, {"resp": wire.DESTINATION_UNAVAILABLE})
            return
        try:
            answer = factory.handler.handle(message)
        except BaseException:
            self._handlerFailed(Failure(), message)
            return
        if type(answer) is dict and type(answer.get("resp")) is str:
            self.answer(message, answer)
        elif isinstance(answer, Deferred):
            self.handling += 1
            factory.handling += 1
            answer.addCallbacks(self._handled, self._handlerFailed, (message, True), None, (message, True))
        else:
            self._handled(answer, message)

    def _handled(self, answer, request, counted=False):
        if counted:
            self.handling -= 1
            self.factory.handling -= 1
        if type(answer) is not dict or type(answer.get("resp")) is not str:
            self.log.error(
                "handler gave no response code for {key} from {peer}; answering 96",
                key=_keyText(wire.messageKey(request)),
                peer=self.peer,
            )
            answer = {"resp": wire.SYSTEM_MALFUNCTION}
        self.answer(request, answer)

    def _handlerFailed(self, failure, request, counted=False):
        if counted:
            self.handling -= 1
            self.factory.handling -= 1
        self.log.failure(
            "handler failed on {mti} {key} from {peer}; answering 96",
            failure,
            mti=request.get("mti"),
            key=_keyText(wire.messageKey(request)),
            peer=self.peer,
        )
        self.answer(request, {"resp": wire.SYSTEM_MALFUNCTION})

    def networkManagement(self, message):
        """
        Answer a C{0800}: sign-on, sign-off and echo test; C{None} if it
        has no C{nmi}.
        """
        nmi = message.get("nmi")
        if type(nmi) is not str:
            return None
        if nmi == wire.ECHO_TEST:
            return {"nmi": nmi, "resp": wire.APPROVED}
        if nmi == wire.SIGN_ON:
            resp = self.factory.signOnReceived(self, message)
            if resp == wire.APPROVED and self.state == "up":
                self.signedOff = False
                self.becomeReady()
            return {"nmi": nmi, "resp": resp}
        if nmi == wire.SIGN_OFF:
            self.signedOff = True
            if self.state == "ready":
                self.state = "up"
                self.log.info("link {peer} signed off by peer", link_event="signed-off", peer=self.peer)
                self.factory.linkNotReady(self)
                self.factory.signOffReceived(self)
            return {"nmi": nmi, "resp": wire.APPROVED}
        return {"nmi": nmi, "resp": wire.INVALID_TRANSACTION}

    def answer(self, request, answer):
        """
        Send C{answer} (a C{dict}) as the response to C{request}. An answer
        that cannot be encoded is logged and answered C{96} instead.
        """
        response = dict(answer)
        response["mti"] = _RESPONSE_MTI.get(request["mti"]) or wire.responseMTI(request["mti"])
        response["sender"] = request["sender"]
        response["stan"] = request["stan"]
        if "time" in request:
            response["time"] = request["time"]
        if self.state in ("lost", "closing"):
            self.log.warn(
                "answer {resp} to {key} not sent: link {peer} is {state}",
                resp=response.get("resp"),
                key=_keyText(wire.messageKey(request)),
                peer=self.peer,
                state=self.state,
            )
            return
        try:
            self.sendMessage(response)
        except CodecError as e:
            self.log.error(
                "answer to {key} from {peer} cannot be sent ({why}); answering 96",
                key=_keyText(wire.messageKey(request)),
                peer=self.peer,
                why=str(e),
            )
            response = {"mti": response["mti"], "sender": request["sender"], "stan": request["stan"], "resp": wire.SYSTEM_MALFUNCTION}
            if "time" in request:
                response["time"] = request["time"]
            self.sendMessage(response)

    def formatError(self, body, reason):
        """
        A body that is not a usable message: answer C{30} if its key can be
        read, else log and drop it. The link stays up.
        """
        self.counters["formatErrors"] += 1
        found = wire.salvageKey(body)
        self.log.warn(
            "format error from {peer}: {reason}; {action}",
            link_event="format-error",
            peer=self.peer,
            reason=reason,
            action="answering 30" if found else "dropped (no key to answer)",
        )
        self.factory.formatErrorReceived(self, reason)
        if found is not None:
            self.answer(found, {"resp": wire.FORMAT_ERROR})

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

    def writeIdle(self):
        self.transport.write(self._header.encode(0))
        self.counters["heartbeatsOut"] += 1
        self.counters["framesOut"] += 1

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

    _pausedCall = None

    #: Whether to watch the transport's buffer from the start (under TLS
    #: only once the handshake is done: TLS pauses its producer while the
    #: handshake runs, and we must not stop reading then).
    backpressureAtConnect = True

    def watchBackpressure(self):
        """
        Answers to a peer that does not read them back up in the
        transport: it then pauses us, and we stop reading its requests.
        """
        self.transport.registerProducer(self, True)
        self._watching = True

    _watching = False

    def pauseProducing(self):
        """
        The transport's buffer toward the peer is full: read nothing more
        from it until it drains; a peer that reads nothing for
        C{idle_timeout} is dropped.
        """
        self._pauseReading(_UNREAD)
        if self._pausedCall is None and self.state not in ("closing", "lost"):
            self._pausedCall = self._clock.callLater(self.idleTimeout, self._notReading)

    def resumeProducing(self):
        call, self._pausedCall = self._pausedCall, None
        if call is not None and call.active():
            call.cancel()
        self._resumeReading(_UNREAD)

    #: Why reading from the peer is paused: a bit mask of L{_UNREAD} (the
    #: peer does not read our frames) and L{_BACKLOG} (frames already read
    #: wait for their turn).
    _pausedFor = 0

    def _pauseReading(self, why):
        if not self._pausedFor:
            self.transport.pauseProducing()
        self._pausedFor |= why

    def _resumeReading(self, why):
        if self._pausedFor & why:
            self._pausedFor &= ~why
            if not self._pausedFor and self.state not in ("closing", "lost"):
                self.transport.resumeProducing()

    def stopProducing(self):
        pass

    def _notReading(self):
        self._pausedCall = None
        self.protocolViolation("peer read nothing of our answers for %gs" % (self.idleTimeout,))

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

_NEVER = float("inf")

# Why a link stopped reading (see LinkProtocol._pausedFor).
_UNREAD = 1
_BACKLOG = 2

#: Response MTIs of the requests WIRE.md names.
_RESPONSE_MTI = {m: wire.responseMTI(m) for m in ("0200", "0220", "0420", "0800", "0820")}
_RESPONSES = frozenset(_RESPONSE_MTI.values())
_REQUESTS = frozenset(_RESPONSE_MTI)


def _keyText(key):
    return "/".join(str(part) for part in key)


class LinkFactory:
    """
    What both roles' factories share: the settings, the handler, the set of
    live links and the hooks a L{LinkProtocol} calls. Subclasses mix this
    with a Twisted factory class.

    @ivar links: every connected link.
    @ivar readyLinks: links that are signed on, in the order they became
        ready.
    """

    protocol = LinkProtocol
    role = None
    log = Logger()

    #: Whether requests other than 0800 are refused (91) on a link that
    #: has not signed on.
    requireSignOn = False

    def setUp(self, settings, handler):
        self.settings = settings
        self.clock = settings.reactor
        self.handler = handler
        self.links = set()
        self.readyLinks = []
        self.counters = dict.fromkeys(
            ("violations", "formatErrors", "late", "timedOut", "links"), 0
        )
        self.observers = []
        self._readyWaiters = []
        #: Handler calls under way on every link of this factory.
        self.handling = 0
        self.limits = LimitLog(self.clock)

    def countersFor(self, link):
        """
        The counters C{link} keeps (see L{LINK_COUNTERS}).
        """
        return dict.fromkeys(LINK_COUNTERS, 0)

    def roundTripsFor(self, link):
        """
        Where C{link} records the round trips of its requests.
        """
        return RoundTrips()

    def linkEvent(self, event, link):
        """
        Tell the observers (callables taking C{event, link, factory}) that
        C{link} changed state: C{"up"}, C{"ready"}, C{"lost"}, and on the
        platform C{"degraded"}, C{"ejected"}, C{"recovering"},
        C{"drained"}.
        """
        for observer in self.observers:
            observer(event, link, self)

    def requestsAnswered(self, link, rtts):
        """
        Requests sent on C{link} got their answers, after C{rtts} seconds
        each (a list: the answers that came in one read).
        """

    def whenReady(self):
        """
        A L{Deferred} that fires with a ready link as soon as there is one.
        """
        if self.readyLinks:
            return succeedWith(self.readyLinks[0])
        d = Deferred(lambda d: self._readyWaiters.remove(d))
        self._readyWaiters.append(d)
        return d

    def linkUp(self, link):
        self.links.add(link)
        self.counters["links"] += 1
        self.linkEvent("up", link)

    def linkReady(self, link):
        if link not in self.readyLinks:
            self.readyLinks.append(link)
        self.linkEvent("ready", link)
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(link)

    def linkNotReady(self, link):
        if link in self.readyLinks:
            self.readyLinks.remove(link)
            self.linkEvent("not-ready", link)

    def linkProven(self, link):
        """
        The peer sent its first valid frame on C{link}.
        """

    def linkLost(self, link, why):
        self.links.discard(link)
        self.linkNotReady(link)
        self.linkEvent("lost", link)

    def signOnReceived(self, link, message):
        """
        The peer asks to sign on; return the response code.
        """
        return wire.INVALID_TRANSACTION

    def signOffReceived(self, link):
        """
        The peer signed off C{link}: it takes no more requests.
        """

    def lateResponse(self, link, key, message):
        """
        An answer matched nothing pending: it came after its request timed
        out, or it is unknown. Logged with its key; never raised.
        """
        self.counters["late"] += 1
        self.log.warn(
            "late or unmatched response {mti} {key} resp {resp} on {peer}",
            link_event="late-response",
            mti=message.get("mti"),
            key=_keyText(key),
            resp=message.get("resp"),
            peer=link.peer,
        )

    def requestTimedOut(self, link, key):
        self.counters["timedOut"] += 1
        self.log.warn(
            "request {key} on {peer} timed out", link_event="timeout", key=_keyText(key), peer=link.peer
        )

    def violationReceived(self, link, reason):
        self.counters["violations"] += 1

    def formatErrorReceived(self, link, reason):
        self.counters["formatErrors"] += 1

    def closeAll(self):
        """
        Close every link; return a L{Deferred} that fires when all are gone.
        """
        self.limits.stop()
        waits = []
        for link in list(self.links):
            waits.append(link.whenLost())
            link.close("service stopping")
        return gatherResults(waits)


def succeedWith(result):
    d = Deferred()
    d.callback(result)
    return d
