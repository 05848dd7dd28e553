"""
Tests for L{tvlink.link.wire}: headers, the pure frame decoder, the codec, keys
and STAN allocation.
"""

from twisted.trial.unittest import SynchronousTestCase

from tvlink.link import wire
from tvlink.errors import CodecError, ProtocolViolation, StanExhausted


class HeaderTests(SynchronousTestCase):
    def test_ascii4(self):
        h = wire.getHeader("ascii4")
        self.assertEqual(h.encode(0), b"0000")
        self.assertEqual(h.encode(123), b"0123")
        self.assertEqual(h.decode(b"9999"), 9999)
        for bad in (b"12a4", b" 123", b"+123", b"-123", b"\x001\x002"):
            self.assertRaises(ProtocolViolation, h.decode, bad)

    def test_binary(self):
        self.assertEqual(wire.getHeader("bin2").encode(258), b"\x01\x02")
        self.assertEqual(wire.getHeader("bin2").decode(b"\xff\xff"), 65535)
        self.assertEqual(wire.getHeader("bin4").encode(258), b"\x00\x00\x01\x02")
        self.assertEqual(wire.getHeader("bin4").decode(b"\x00\x01\x00\x00"), 65536)

    def test_unknown(self):
        e = self.assertRaises(ValueError, wire.getHeader, "ascii6")
        self.assertIn("ascii6", str(e))


class FrameDecoderTests(SynchronousTestCase):
    def test_whole_and_split(self):
        stream = b"0003abc0000" + b"0005hello"
        whole = wire.FrameDecoder(wire.getHeader("ascii4")).feed(stream)
        self.assertEqual(whole, [b"abc", b"", b"hello"])
        for step in (1, 2, 3, 5, 7):
            d = wire.FrameDecoder(wire.getHeader("ascii4"))
            out = []
            for i in range(0, len(stream), step):
                out.extend(d.feed(stream[i : i + step]))
            self.assertEqual(out, whole)
            self.assertFalse(d.partial)

    def test_partial(self):
        d = wire.FrameDecoder(wire.getHeader("ascii4"))
        self.assertEqual(d.feed(b"00"), [])
        self.assertTrue(d.partial)
        self.assertEqual(d.feed(b"02x"), [])
        self.assertEqual(d.buffered(), 5)
        self.assertEqual(d.feed(b"y"), [b"xy"])
        self.assertFalse(d.partial)

    def test_non_digit_header(self):
        d = wire.FrameDecoder(wire.getHeader("ascii4"))
        e = self.assertRaises(ProtocolViolation, d.feed, b"00x1")
        self.assertIn("not four decimal digits", str(e))
        # Broken for good: framing is lost.
        self.assertRaises(ProtocolViolation, d.feed, b"0000")

    def test_frames_before_violation_kept(self):
        d = wire.FrameDecoder(wire.getHeader("ascii4"))
        self.assertEqual(d.feed(b"0002ok0000zzzz"), [b"ok", b""])
        self.assertIsInstance(d.broken, ProtocolViolation)
        self.assertRaises(ProtocolViolation, d.feed, b"")

    def test_oversize_binary(self):
        d = wire.FrameDecoder(wire.getHeader("bin4"), maxFrame=100)
        self.assertEqual(d.feed(b"\x00\x00\x00\x64" + b"x" * 100), [b"x" * 100])
        e = self.assertRaises(ProtocolViolation, d.feed, b"\x00\x00\x00\x65")
        self.assertIn("exceeds the maximum of 100", str(e))

    def test_oversize_ascii4_capped(self):
        d = wire.FrameDecoder(wire.getHeader("ascii4"), maxFrame=10)
        self.assertRaises(ProtocolViolation, d.feed, b"0011")

    def test_bin2(self):
        d = wire.FrameDecoder(wire.getHeader("bin2"))
        self.assertEqual(d.feed(b"\x00\x00\x00\x02hi"), [b"", b"hi"])


class CodecTests(SynchronousTestCase):
    fast = True

    def setUp(self):
        self.codec = wire.JSONCodec(fast=self.fast)

    def test_round_trip(self):
        m = {"mti": "0200", "pan": "6222", "orig": {"stan": "000001"}, "name": "电视"}
        self.assertEqual(self.codec.decode(self.codec.encode(m)), m)
        self.assertIn("电视".encode("utf-8"), self.codec.encode(m))

    def test_errors(self):
        for bad in (b"{", b"[1]", b"\xff\xfe", b"null", b'"x"', b'{"a":NaN}' if self.fast else b"{]"):
            self.assertRaises(CodecError, self.codec.decode, bad)
        for bad in ({"a": object()}, {1j: "x"}):
            self.assertRaises(CodecError, self.codec.encode, bad)

    def test_compact_utf8(self):
        self.assertEqual(self.codec.encode({"a": "电", "b": "1"}), '{"a":"电","b":"1"}'.encode("utf-8"))


class StandardLibraryCodecTests(CodecTests):
    fast = False


class KeyTests(SynchronousTestCase):
    def test_mti(self):
        self.assertEqual(wire.responseMTI("0200"), "0210")
        self.assertEqual(wire.responseMTI("0820"), "0830")
        self.assertTrue(wire.isResponse("0430"))
        self.assertFalse(wire.isResponse("0420"))

    def test_salvage(self):
        found = wire.salvageKey(b'{"mti":"0200","sender":"A","stan":"000001","amount":7}')
        self.assertEqual(found, {"mti": "0200", "sender": "A", "stan": "000001"})
        self.assertIsNone(wire.salvageKey(b'{"mti":"0200","stan":"000001"}'))
        self.assertIsNone(wire.salvageKey(b"{not json"))
        self.assertIsNone(wire.salvageKey(b'{"mti":"0210","sender":"A","stan":"1"}'))
        self.assertIsNone(wire.salvageKey(b'{"sender":"A","stan":"1"}'))

    def test_transmission_time(self):
        import time

        self.assertEqual(wire.formatTransmissionTime(0, time.gmtime), "0101000000")
        self.assertEqual(
            wire.formatTransmissionTime(86400 * 31 + 3723, time.gmtime), "0201010203"
        )


class StanTests(SynchronousTestCase):
    def test_sequence_and_wrap(self):
        s = wire.StanAllocator(start=999998)
        self.assertEqual([s.allocate(), s.allocate(), s.allocate()], ["999998", "999999", "000001"])

    def test_never_reused_in_flight(self):
        s = wire.StanAllocator(start=999999)
        self.assertEqual(s.allocate(), "999999")
        self.assertEqual(s.allocate(), "000001")
        s.release("000001")
        s._next = 999998  # come round again
        self.assertEqual(s.allocate(), "000001")  # 999999 still in flight

    def test_reserve(self):
        s = wire.StanAllocator()
        self.assertTrue(s.reserve("000001"))
        self.assertFalse(s.reserve("000001"))
        self.assertEqual(s.allocate(), "000002")
        self.assertEqual(s.inFlight(), 2)

    def test_exhausted(self):
        s = wire.StanAllocator()
        s._busy = {"%06d" % i for i in range(1, 1000000)}
        self.assertRaises(StanExhausted, s.allocate)
