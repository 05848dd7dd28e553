"""
Property tests (hypothesis) for the wire: the frame decoder and the JSON
codec on any input, in any split.

Each property runs about 200 examples with no deadline and no example
database, so the suite stays fast and leaves nothing behind.
"""

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tvlink.link import wire
from tvlink.errors import CodecError, ProtocolViolation

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.differing_executors],
)

HEADERS = st.sampled_from(sorted(wire.HEADERS))

#: Small maximum frames too, so oversize headers are common.
MAX_FRAMES = st.sampled_from([1, 16, 300, wire.DEFAULT_MAX_FRAME])

#: Text JSON can carry: no lone surrogates (they cannot be UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def streams():
    """
    Byte streams worth decoding: pure noise, and runs of well-formed
    frames with noise mixed in (so the decoder gets past its first header).
    """
    header = st.shared(HEADERS, key="header")

    @st.composite
    def framed(draw):
        h = wire.HEADERS[draw(header)]
        parts = []
        for body in draw(st.lists(st.binary(max_size=60), max_size=8)):
            parts.append(wire.encodeFrame(h, body))
            if draw(st.integers(0, 9)) == 0:
                parts.append(draw(st.binary(max_size=8)))
        return b"".join(parts)

    return st.one_of(st.binary(max_size=600), framed())


def cuts(data):
    """
    A strategy for ways to split C{data}: sorted cut positions.
    """
    return st.lists(st.integers(0, len(data)), max_size=12).map(sorted)


def split(data, positions):
    chunks = []
    start = 0
    for p in positions:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


def decodeStream(header, maxFrame, chunks):
    """
    Feed C{chunks} to a fresh decoder.

    @return: C{(bodies, violated, decoder)}: every body it gave, whether it
        hit a L{ProtocolViolation}, and the decoder.
    """
    decoder = wire.FrameDecoder(header, maxFrame)
    bodies = []
    for chunk in chunks:
        try:
            bodies.extend(decoder.feed(chunk))
        except ProtocolViolation:
            return bodies, True, decoder
    return bodies, decoder.broken is not None, decoder


def reference(header, maxFrame, data):
    """
    An independent reading of the framing rules (WIRE.md), for comparison:
    C{(bodies, violated)} for the whole of C{data}.
    """
    limit = min(header.limit, maxFrame)
    bodies = []
    pos = 0
    while len(data) - pos >= header.size:
        raw = data[pos : pos + header.size]
        if header.name == "ascii4":
            if not all(48 <= b <= 57 for b in raw):
                return bodies, True
            length = int(raw.decode("ascii"))
        else:
            length = int.from_bytes(raw, "big")
        if length > limit:
            return bodies, True
        if len(data) - pos - header.size < length:
            break
        bodies.append(data[pos + header.size : pos + header.size + length])
        pos += header.size + length
    return bodies, False


class FrameDecoderProperties(SynchronousTestCase):
    @PROPERTY
    @given(st.data(), st.shared(HEADERS, key="header"), MAX_FRAMES, streams())
    def test_anySplit(self, data, headerName, maxFrame, stream):
        """
        Any bytes, in any split: the decoder raises nothing but
        L{ProtocolViolation}, returns, keeps at most one frame buffered,
        and gives the same frames and the same verdict as the whole stream
        fed at once and as an independent reading of the rules.
        """
        header = wire.HEADERS[headerName]
        positions = data.draw(cuts(stream), label="cuts")
        whole = decodeStream(header, maxFrame, [stream])
        pieces = decodeStream(header, maxFrame, split(stream, positions))
        self.assertEqual(whole[:2], pieces[:2])
        self.assertEqual(whole[:2], reference(header, maxFrame, stream))
        decoder = pieces[2]
        limit = wire.effectiveMaxFrame(header, maxFrame)
        self.assertLessEqual(decoder.buffered(), header.size + limit)
        self.assertLessEqual(sum(len(b) for b in pieces[0]), len(stream))
        for body in pieces[0]:
            self.assertLessEqual(len(body), limit)
        if pieces[1]:
            # Once broken, it stays broken.
            self.assertRaises(ProtocolViolation, decoder.feed, b"0000")

    @PROPERTY
    @given(st.shared(HEADERS, key="header"), MAX_FRAMES, st.binary(max_size=300))
    def test_byteByByte(self, headerName, maxFrame, stream):
        """
        One byte at a time gives what the whole stream gives.
        """
        header = wire.HEADERS[headerName]
        whole = decodeStream(header, maxFrame, [stream])
        bytewise = decodeStream(header, maxFrame, [stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual(whole[:2], bytewise[:2])

    @PROPERTY
    @given(
        st.data(),
        HEADERS,
        st.lists(st.binary(max_size=200), max_size=10),
    )
    @example(data=None, headerName="ascii4", bodies=[b"x" * 9999, b""])
    @example(data=None, headerName="bin2", bodies=[b"y" * 0xFFFF])
    @example(data=None, headerName="bin4", bodies=[b"z" * wire.DEFAULT_MAX_FRAME, b""])
    def test_roundTrip(self, data, headerName, bodies):
        """
        Frames encoded back to back, under every header, decode to the same
        bodies in any split (the largest frame each header allows
        included).
        """
        header = wire.HEADERS[headerName]
        stream = b"".join(wire.encodeFrame(header, body) for body in bodies)
        positions = data.draw(cuts(stream), label="cuts") if data is not None else [1, 5, len(stream) // 2]
        decoded, violated, decoder = decodeStream(header, wire.DEFAULT_MAX_FRAME, split(stream, positions))
        self.assertFalse(violated)
        self.assertEqual(decoded, bodies)
        self.assertFalse(decoder.partial)


def messages():
    """
    Message dicts as the codec carries them: string values, and an C{orig}
    object of strings.
    """
    flat = st.dictionaries(TEXT, TEXT, max_size=8)
    orig = st.fixed_dictionaries({}, optional={k: TEXT for k in ("mti", "sender", "stan", "time")})
    return st.builds(
        lambda fields, o: dict(fields, orig=o) if o is not None else fields,
        flat,
        st.one_of(st.none(), orig, st.dictionaries(TEXT, TEXT, max_size=4)),
    )


class _CodecProperties:
    """
    Properties every build of L{wire.JSONCodec} has; subclasses choose the
    build (orjson, or the standard library).
    """

    codec = None

    @PROPERTY
    @given(messages())
    def test_roundTrip(self, message):
        """
        encode then decode gives the message back, through either build on
        the other end, and the body frames and unframes unchanged under
        every header.
        """
        body = self.codec.encode(message)
        self.assertEqual(self.codec.decode(body), message)
        for other in CODECS:
            self.assertEqual(other.decode(body), message)
            self.assertEqual(self.codec.decode(other.encode(message)), message)
        encodeRaw, decodeRaw = self.codec.raw
        self.assertEqual(decodeRaw(encodeRaw(message)), message)
        for header in wire.HEADERS.values():
            if len(body) <= header.limit:
                decoder = wire.FrameDecoder(header)
                self.assertEqual(decoder.feed(wire.encodeFrame(header, body)), [body])

    @PROPERTY
    @given(st.one_of(st.binary(max_size=300), st.builds(lambda m: json.dumps(m).encode(), messages())))
    def test_decodeAnything(self, body):
        """
        Any body decodes to a dict or fails with L{CodecError}; the bare
        decoder of the per-message path raises nothing but C{ValueError}.
        """
        try:
            message = self.codec.decode(body)
        except CodecError:
            pass
        else:
            self.assertIsInstance(message, dict)
        try:
            self.codec.raw[1](body)
        except ValueError:
            pass


#: Both builds of the codec: orjson (when installed) and the standard library.
CODECS = (wire.JSONCodec(), wire.JSONCodec(fast=False))


class FastCodecProperties(_CodecProperties, SynchronousTestCase):
    codec = CODECS[0]


class StdlibCodecProperties(_CodecProperties, SynchronousTestCase):
    codec = CODECS[1]


class SalvageKeyProperties(SynchronousTestCase):
    @PROPERTY
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.builds(lambda m: json.dumps(m).encode(), messages()),
            st.recursive(
                st.one_of(st.none(), st.booleans(), st.integers(), TEXT),
                lambda inner: st.one_of(
                    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)
                ),
                max_leaves=20,
            ).map(lambda v: json.dumps(v).encode()),
            messages(),
        )
    )
    def test_neverRaises(self, body):
        """
        C{salvageKey} never raises, and what it salvages is a request key
        of strings with a valid request MTI.
        """
        found = wire.salvageKey(body)
        if found is not None:
            self.assertIsInstance(found, dict)
            self.assertTrue(wire.isValidMTI(found["mti"]))
            self.assertFalse(wire.isResponse(found["mti"]))
            self.assertIsInstance(found["sender"], str)
            self.assertIsInstance(found["stan"], str)


class DeepNestingTests(SynchronousTestCase):
    """
    A body of deeply nested JSON (5000 bytes, well inside an ascii4 frame),
    the input the fuzz target found: the standard library's C{json} raises
    C{RecursionError}, which is neither L{CodecError} nor C{ValueError}.
    orjson refuses it properly, but C{salvageKey} (run on every body that
    did not decode) still uses C{json}, so the error escapes the link's
    C{dataReceived}. Each must end as a L{CodecError} or no key.
    """

    body = b"[" * 5000

    def test_fastDecode(self):
        codec = wire.JSONCodec()
        if codec._fast is None:
            raise SkipTest("orjson is not installed")
        self.assertRaises(CodecError, codec.decode, self.body)

    def test_stdlibDecode(self):
        self.assertRaises(CodecError, wire.JSONCodec(fast=False).decode, self.body)

    def test_salvageKey(self):
        self.assertIsNone(wire.salvageKey(self.body))

    def test_link(self):
        """
        The link answers such a body as a format error (or drops it) and
        stays up; nothing escapes C{dataReceived}.
        """
        from tests.helpers import Pair

        pair = Pair()
        pair.flush()
        pair.payment.dataReceived(b"%04d" % (len(self.body),) + self.body)
        self.assertEqual(pair.payment.state, "ready")
        self.assertEqual(pair.payment.counters["formatErrors"], 1)
