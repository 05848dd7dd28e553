"""
The C{cups} codec: the 46-byte CUPS message header, then an ISO 8583
body (L{tvlink.link.iso8583}).

The header, byte by byte (offset, length, content):

=====  ===  ==================================================
0      1    header length, binary: 46
1      1    header flag and version, binary
2      4    total message length, ASCII digits: header + body
6      11   destination institution id, ASCII, space padded
17     11   source institution id, ASCII, space padded
28     3    reserved, binary
31     1    batch number, binary
32     8    transaction information, ASCII
40     1    user information, binary
41     5    reject code, ASCII; C{00000} when not rejected
=====  ===  ==================================================

A response swaps the request's destination and source. A message whose
receiver rejected its header comes back with the reject code set (and,
as hosts do, the original header and body after the reject header): it
is reported as L{HeaderRejected}. A header whose lengths disagree with
the frame is a L{ProtocolViolation}.
"""

import struct

from tvlink.errors import CodecError, HeaderRejected, ProtocolViolation
from tvlink.link import wire
from tvlink.link.iso8583 import ISO8583Codec

HEADER_LENGTH = 46

#: Header flag and version: production, version 1.
DEFAULT_FLAG = 0x01

NOT_REJECTED = ("00000", "     ")

_LAYOUT = struct.Struct("!BB4s11s11s3sB8sB5s")

#: Received requests' header ids kept for their answers, at most.
REMEMBERED = 10000


class CUPSHeader:
    """
    One decoded header.
    """

    __slots__ = ("flag", "total", "destination", "source", "reserved", "batch",
                 "transaction", "user", "reject")

    def __init__(self, destination="", source="", flag=DEFAULT_FLAG, total=0, reserved=b"\0\0\0",
                 batch=0, transaction="00000000", user=0, reject="00000"):
        self.flag = flag
        self.total = total
        self.destination = destination
        self.source = source
        self.reserved = reserved
        self.batch = batch
        self.transaction = transaction
        self.user = user
        self.reject = reject

    @property
    def rejected(self):
        return self.reject not in NOT_REJECTED

    def pack(self, bodyLength):
        total = HEADER_LENGTH + bodyLength
        if total > 9999:
            raise CodecError("a CUPS message of %d bytes does not fit its 4-digit length" % (total,))
        return _LAYOUT.pack(
            HEADER_LENGTH,
            self.flag,
            b"%04d" % (total,),
            _id(self.destination),
            _id(self.source),
            self.reserved,
            self.batch,
            self.transaction.encode("ascii").ljust(8, b"0")[:8],
            self.user,
            self.reject.encode("ascii"),
        )

    @classmethod
    def unpack(cls, raw, frameLength):
        """
        Read the header at the start of C{raw}, a frame body of
        C{frameLength} bytes.

        @raise ProtocolViolation: if its lengths disagree with the frame.
        """
        if len(raw) < HEADER_LENGTH:
            raise ProtocolViolation("frame of %d bytes is shorter than a CUPS header" % (len(raw),))
        (length, flag, total, destination, source, reserved, batch, transaction, user,
         reject) = _LAYOUT.unpack(bytes(raw[:HEADER_LENGTH]))
        if length != HEADER_LENGTH:
            raise ProtocolViolation("CUPS header length is %d, not %d" % (length, HEADER_LENGTH))
        if not total.isdigit() or int(total) != frameLength:
            raise ProtocolViolation(
                "CUPS total length %r disagrees with the frame's %d bytes" % (total, frameLength)
            )
        return cls(
            destination.decode("ascii", "replace").rstrip(" "),
            source.decode("ascii", "replace").rstrip(" "),
            flag,
            int(total),
            reserved,
            batch,
            transaction.decode("ascii", "replace"),
            user,
            reject.decode("ascii", "replace"),
        )


def _id(text):
    raw = text.encode("ascii")
    if len(raw) > 11:
        raise CodecError("institution id %r is longer than 11 characters" % (text,))
    return raw.ljust(11, b" ")


class CUPSCodec:
    """
    The CUPS header and an ISO 8583 body; the interface of
    L{tvlink.link.wire.JSONCodec}.

    @param source: this node's institution id (the header's source).
    @param destination: the peer's, for requests this node starts.
    """

    name = "cups"

    def __init__(self, source="", destination="", flag=DEFAULT_FLAG, iso=None):
        self.iso = iso if iso is not None else ISO8583Codec()
        self.source = source
        self.destination = destination
        self.flag = flag
        _id(source), _id(destination)
        # (sender, stan, time) of a request received -> its header's
        # (destination, source), for the answer to swap.
        self._received = {}

    def encode(self, message):
        body = self.iso.encode(message)
        destination, source = self.destination, self.source
        mti = message.get("mti", "")
        if mti in wire.RESPONSE_MTIS or wire.isResponse(mti):
            ids = self._received.pop(wire.messageKey(message), None)
            if ids is not None:
                source, destination = ids
        return CUPSHeader(destination, source, self.flag).pack(len(body)) + body

    def decode(self, body):
        header = CUPSHeader.unpack(body, len(body))
        rest = body[HEADER_LENGTH:]
        if header.rejected:
            raise self._rejection(header, rest)
        message = self.iso.decode(rest)
        mti = message["mti"]
        if not wire.isResponse(mti):
            received = self._received
            if len(received) >= REMEMBERED:
                del received[next(iter(received))]
            received[wire.messageKey(message)] = (header.destination, header.source)
        return message

    def _rejection(self, header, rest):
        # The rejected message follows, with its own header when the host
        # sends one.
        if len(rest) >= HEADER_LENGTH and rest[0] == HEADER_LENGTH:
            rest = rest[HEADER_LENGTH:]
        key = None
        try:
            fields = self.iso.fromFields(self.iso.readLeniently(rest))
            key = wire.messageKey(fields)
            mti = fields.get("mti")
        except Exception:
            mti = None
        return HeaderRejected(header.reject, key, mti)

    def salvage(self, body):
        if isinstance(body, dict):
            return wire.salvageKey(body)
        if len(body) < HEADER_LENGTH:
            return None
        return self.iso.salvage(body[HEADER_LENGTH:])

