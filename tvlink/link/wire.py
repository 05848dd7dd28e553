"""
The tvlink wire: frame headers, a pure frame decoder, the JSON codec,
correlation keys and STAN allocation.

Nothing here does I/O or reads a clock: bytes go in, frames or a
L{ProtocolViolation} come out, which is what lets the decoder be fuzzed.
"""

import json
import struct

from tvlink.errors import CodecError, ProtocolViolation, StanExhausted

#: Default maximum body size for length-prefixed binary headers (64 KiB).
DEFAULT_MAX_FRAME = 64 * 1024

#: The idle-connection query (link-check) frame body.
IDLE_BODY = b""

#: The largest amount a message carries: its C{amount} field is 12 digits
#: of fen.
MAX_AMOUNT = 10**12 - 1

# Response codes (WIRE.md).
APPROVED = "00"
INVALID_TRANSACTION = "12"
INVALID_AMOUNT = "13"
INVALID_CARD = "14"
ORIGINAL_NOT_FOUND = "25"
FORMAT_ERROR = "30"
INSUFFICIENT_FUNDS = "51"
LATE_RESPONSE = "68"
DESTINATION_UNAVAILABLE = "91"
DUPLICATE = "94"
SYSTEM_MALFUNCTION = "96"

# Network-management codes.
SIGN_ON = "001"
SIGN_OFF = "002"
ECHO_TEST = "301"


class Header:
    """
    A frame header: a fixed number of bytes giving the body length.

    @ivar name: the configuration name (C{ascii4}, C{bin2}, C{bin4}).
    @ivar size: the header length in bytes.
    @ivar limit: the largest body length the header can express.
    """

    name = None
    size = 0
    limit = 0

    def encode(self, length):
        """
        Return the header bytes announcing a body of C{length} bytes.
        """
        raise NotImplementedError()

    def decode(self, raw):
        """
        Return the body length given by header bytes C{raw}.

        @raise ProtocolViolation: if C{raw} is not a length.
        """
        raise NotImplementedError()


#: ascii4 headers already made, by length (at most 10000 of them).
_ASCII4 = {}


class Ascii4Header(Header):
    """
    Four ASCII decimal digits, zero padded: C{0000} to C{9999}.
    """

    name = "ascii4"
    size = 4
    limit = 9999

    def encode(self, length):
        header = _ASCII4.get(length)
        if header is None:
            if not 0 <= length <= 9999:
                raise ValueError("ascii4 cannot announce a body of %r bytes" % (length,))
            header = _ASCII4[length] = b"%04d" % (length,)
        return header

    def decode(self, raw):
        if not raw.isdigit():
            raise ProtocolViolation("header %r is not four decimal digits" % (bytes(raw),))
        return int(raw)


class _BinaryHeader(Header):
    """
    An unsigned big-endian binary length.
    """

    _struct = None

    def encode(self, length):
        return self._struct.pack(length)

    def decode(self, raw):
        return self._struct.unpack(raw)[0]


class Bin2Header(_BinaryHeader):
    name = "bin2"
    size = 2
    limit = 0xFFFF
    _struct = struct.Struct("!H")


class Bin4Header(_BinaryHeader):
    name = "bin4"
    size = 4
    limit = 0xFFFFFFFF
    _struct = struct.Struct("!I")


HEADERS = {h.name: h for h in (Ascii4Header(), Bin2Header(), Bin4Header())}


def getHeader(name):
    """
    Return the L{Header} called C{name}.

    @raise ValueError: for an unknown name.
    """
    try:
        return HEADERS[name]
    except KeyError:
        raise ValueError(
            "unknown header %r (choose one of %s)" % (name, ", ".join(sorted(HEADERS)))
        ) from None


def effectiveMaxFrame(header, maxFrame=DEFAULT_MAX_FRAME):
    """
    The largest body accepted under C{header} with a configured maximum.
    """
    return min(header.limit, maxFrame)


def encodeFrame(header, body):
    """
    Frame C{body} (bytes) under C{header}.
    """
    return header.encode(len(body)) + body


class FrameDecoder:
    """
    Split a byte stream into frame bodies.

    Feed it bytes in any split; it returns the complete bodies so far (an
    empty body is an idle query) and keeps the rest. Once it has raised
    L{ProtocolViolation} it stays broken: the stream has lost its framing.

    @ivar partial: C{True} while a frame has begun but is not complete.
    """

    def __init__(self, header, maxFrame=DEFAULT_MAX_FRAME):
        self.header = header
        self.maxFrame = effectiveMaxFrame(header, maxFrame)
        self._buffer = b""
        self._broken = None

    @property
    def partial(self):
        return len(self._buffer) > 0

    @property
    def broken(self):
        """
        The L{ProtocolViolation} that broke the stream, or C{None}.
        """
        return self._broken

    def buffered(self):
        """
        The number of bytes held waiting for the rest of a frame.
        """
        return len(self._buffer)

    def feed(self, data):
        """
        Add C{data}; return the list of complete frame bodies.

        @raise ProtocolViolation: on a header that is not a length, or one
            announcing more than the maximum frame size.
        """
        if self._broken is not None:
            raise self._broken
        buf = self._buffer + data if self._buffer else data
        header = self.header
        hsize = header.size
        decode = header.decode
        # ascii4, the default, is read here rather than by a call per frame.
        ascii4 = type(header) is Ascii4Header
        maxFrame = self.maxFrame
        end = len(buf)
        pos = 0
        bodies = []
        while end - pos >= hsize:
            raw = buf[pos : pos + hsize]
            try:
                if ascii4 and raw.isdigit():
                    length = int(raw)
                else:
                    length = decode(raw)
                if length > maxFrame:
                    raise ProtocolViolation(
                        "frame of %d bytes exceeds the maximum of %d" % (length, maxFrame)
                    )
            except ProtocolViolation as violation:
                # Hand back the frames that came before the bad header;
                # the violation is raised now if there are none, else by
                # the next feed (and readable at once from .broken).
                self._broken = violation
                self._buffer = b""
                if not bodies:
                    raise
                return bodies
            stop = pos + hsize + length
            if stop > end:
                break
            bodies.append(buf[pos + hsize : stop])
            pos = stop
        self._buffer = buf[pos:] if pos < end else b""
        return bodies


class JSONCodec:
    """
    The default message codec: one UTF-8 JSON object per frame body.

    It uses orjson when it is installed (several times faster on the
    per-message path; same compact UTF-8 output) and the standard library
    otherwise.
    """

    name = "json"

    def __init__(self, fast=True):
        self._fast = None
        if fast:
            try:
                import orjson
            except ImportError:
                orjson = None
            self._fast = orjson
        self._encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
        self._decoder = json.JSONDecoder()
        if self._fast is not None:
            self.encode = self._encodeFast
            self.decode = self._decodeFast
            #: The bare functions for the per-message path: encoding raises
            #: TypeError or ValueError, decoding ValueError, and decoding
            #: may return something other than a dict.
            self.raw = (self._fast.dumps, self._fast.loads)
        else:
            encode, decode = self._encoder.encode, self._decoder.decode
            self.raw = (
                lambda message: encode(message).encode("utf-8"),
                lambda body: decode(bytes(body).decode("utf-8")),
            )

    def encode(self, message):
        """
        Encode a message C{dict} to bytes.

        @raise CodecError: if it holds something JSON cannot carry.
        """
        try:
            return self._encoder.encode(message).encode("utf-8")
        except (TypeError, ValueError) as e:
            raise CodecError("message cannot be encoded as JSON: %s" % (e,)) from None

    def decode(self, body):
        """
        Decode bytes to a message C{dict}.

        @raise CodecError: if C{body} is not a UTF-8 JSON object.
        """
        try:
            message = self._decoder.decode(bytes(body).decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise CodecError("body is not UTF-8 JSON: %s" % (e,)) from None
        if type(message) is not dict:
            raise CodecError("body is JSON but not an object")
        return message

    def _encodeFast(self, message):
        try:
            return self._fast.dumps(message)
        except TypeError as e:
            raise CodecError("message cannot be encoded as JSON: %s" % (e,)) from None

    def _decodeFast(self, body):
        try:
            message = self._fast.loads(body)
        except ValueError as e:
            raise CodecError("body is not UTF-8 JSON: %s" % (e,)) from None
        if type(message) is not dict:
            raise CodecError("body is JSON but not an object")
        return message


def messageKey(message):
    """
    The correlation key (sender, stan, time) of a message C{dict}.
    """
    return (message.get("sender"), message.get("stan"), message.get("time"))


def isResponse(mti):
    """
    Whether a 4-digit MTI is a response (its third digit odd: 0210, 0830 ...).
    """
    return len(mti) == 4 and mti[2] in "13579"


def responseMTI(mti):
    """
    The MTI answering request C{mti}: C{0200} -> C{0210}.
    """
    return mti[:2] + str(int(mti[2]) + 1) + mti[3]


#: The requests WIRE.md names, each with the MTI of its response.
RESPONSE_MTI = {m: responseMTI(m) for m in ("0200", "0220", "0420", "0800", "0820")}
#: The MTIs of the requests WIRE.md names.
REQUEST_MTIS = frozenset(RESPONSE_MTI)
#: The MTIs of their responses.
RESPONSE_MTIS = frozenset(RESPONSE_MTI.values())


def keyText(key):
    """
    A correlation key as log text: C{sender/stan/time}.
    """
    return "/".join(str(part) for part in key)


def isValidMTI(mti):
    return type(mti) is str and len(mti) == 4 and mti.isdigit() and mti.isascii()


def salvageKey(body):
    """
    Try to read the correlation key and MTI from a body that did not
    decode as a proper message, so a C{30} answer can still be correlated.

    @return: a partial message C{dict} with C{mti}, C{sender}, C{stan} and
        C{time} when they can all (but C{time}) be read as strings, else
        C{None}.
    """
    if isinstance(body, dict):
        candidate = body
    else:
        try:
            candidate = json.loads(bytes(body).decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(candidate, dict):
            return None
    found = {}
    for field in ("mti", "sender", "stan", "time"):
        value = candidate.get(field)
        if isinstance(value, str):
            found[field] = value
    if "sender" not in found or "stan" not in found:
        return None
    if not isValidMTI(found.get("mti")) or isResponse(found["mti"]):
        return None
    return found


def formatTransmissionTime(seconds, localtime):
    """
    Format C{seconds} since the epoch as C{MMDDhhmmss} with C{localtime}
    (C{time.localtime} or a replacement in tests).
    """
    t = localtime(seconds)
    return "%02d%02d%02d%02d%02d" % (t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


#: "000" to "999": a STAN is two of these (formatting one with "%06d"
#: costs several times more, on every request).
_TRIPLES = tuple("%03d" % (n,) for n in range(1000))


class StanAllocator:
    """
    System trace audit numbers for one sender: six digits, 000001 to
    999999, wrapping, never handing out one that is still in flight.
    """

    modulus = 999999

    def __init__(self, start=1):
        self._next = (start - 1) % self.modulus
        self._busy = set()
        #: The request that used a STAN is over: C{release(stan)}.
        self.release = self._busy.discard

    def allocate(self):
        """
        Return a fresh STAN and mark it in flight.

        @raise StanExhausted: if every STAN is in flight.
        """
        busy = self._busy
        n = self._next + 1
        stan = _TRIPLES[n // 1000] + _TRIPLES[n % 1000]
        if stan in busy:
            # Still in flight: walk on to a free one.
            if len(busy) >= self.modulus:
                raise StanExhausted("all %d STANs are in flight" % (self.modulus,))
            while True:
                n = n % self.modulus + 1
                stan = "%06d" % (n,)
                if stan not in busy:
                    break
        self._next = n % self.modulus
        busy.add(stan)
        return stan

    def reserve(self, stan):
        """
        Mark a caller-chosen STAN in flight.

        @return: C{False} if it was already in flight.
        """
        if stan in self._busy:
            return False
        self._busy.add(stan)
        return True

    def inFlight(self):
        return len(self._busy)
