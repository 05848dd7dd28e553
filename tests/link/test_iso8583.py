"""
Golden vectors for the C{iso8583} and C{cups} codecs, written by hand from
the ISO 8583:1987 layout (MTI, bitmaps, fields in order, LLVAR/LLLVAR
lengths as ASCII digits) and the CUPS header layout (docs/protocol.rst),
not produced by tvlink's encoder; and the codecs' bad input, on a link.

Every vector is checked both ways: decoding it gives the message dict,
and encoding the dict gives the vector.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import Events, SingleLink
from tvlink.errors import CodecError, HeaderRejected, ProtocolViolation
from tvlink.link import wire
from tvlink.link.codecs import makeCodec
from tvlink.link.cups import CUPSCodec
from tvlink.link.iso8583 import ISO8583Codec

PLATFORM = "10000001"
PAYMENT = "20000002"
PAN = "6222020000000000018"
TIME = "0615103000"
KEY = {"stan": "000123", "time": TIME}

#: Fields 7, 11, 32 and 33 of a message from the platform, as they follow
#: each other on the wire.
FROM_PLATFORM = (
    b"0615103000"  # 7   transmission date-time MMDDhhmmss, n10
    b"000123"  # 11  STAN, n6
    b"08" b"10000001"  # 32  acquiring institution id, LLVAR n..11
    b"08" b"10000001"  # 33  forwarding institution id, LLVAR n..11
)

#: Secondary bitmap with only field 70; with only field 90.
SECONDARY_70 = bytes.fromhex("0400000000000000")
SECONDARY_90 = bytes.fromhex("0000004000000000")

#: Field 90 naming the platform's purchase 000122 of 0615102959:
#: original MTI (4), STAN (6), time (10), acquiring and forwarding
#: institution ids zero filled to 11 digits.
ORIGINAL = b"0200" b"000122" b"0615102959" b"00010000001" b"00010000001"
ORIG = {"mti": "0200", "sender": PLATFORM, "stan": "000122", "time": "0615102959"}


def answer(mti, bitmap, *fields, secondary=b""):
    """
    An answer from the payment side to the platform's request: it repeats
    the request's 7, 11, 32 and 33.
    """
    return mti + bytes.fromhex(bitmap) + secondary + FROM_PLATFORM + b"".join(fields)


# (name, message dict, ISO 8583 body)
VECTORS = [
    (
        "sign-on 0800/001",
        dict(KEY, mti="0800", nmi="001", sender=PLATFORM),
        b"0800"
        # primary bitmap: 1 (secondary present) 7 11 32 33
        + bytes.fromhex("8220000180000000")
        + SECONDARY_70
        + FROM_PLATFORM
        + b"001",  # 70 network management code, n3
    ),
    (
        "sign-on answer 0810",
        dict(KEY, mti="0810", nmi="001", resp="00", sender=PLATFORM),
        # primary bitmap: 1 7 11 32 33 39
        answer(b"0810", "8220000182000000", b"00", b"001", secondary=SECONDARY_70),
    ),
    (
        "echo test 0800/301",
        dict(KEY, mti="0800", nmi="301", sender=PLATFORM),
        b"0800" + bytes.fromhex("8220000180000000") + SECONDARY_70 + FROM_PLATFORM + b"301",
    ),
    (
        "purchase 0200/000000",
        dict(KEY, mti="0200", proc="000000", pan=PAN, amount="000000001234", currency="156",
             order="ORD-1", sender=PLATFORM),
        b"0200"
        # primary bitmap: 2 3 4 7 11 32 33 48 49
        + bytes.fromhex("7220000180018000")
        + b"19" + PAN.encode()  # 2   PAN, LLVAR n..19
        + b"000000"  # 3   processing code, n6
        + b"000000001234"  # 4   amount in fen, n12
        + FROM_PLATFORM
        + b"005" b"ORD-1"  # 48  order id, LLLVAR ans..999
        + b"156",  # 49  currency, n3
    ),
    (
        "purchase answer 0210",
        dict(KEY, mti="0210", resp="00", sender=PLATFORM),
        # primary bitmap: 7 11 32 33 39
        answer(b"0210", "0220000182000000", b"00"),
    ),
    (
        "balance inquiry 0200/300000",
        dict(KEY, mti="0200", proc="300000", pan=PAN, sender=PLATFORM),
        # primary bitmap: 2 3 7 11 32 33
        b"0200" + bytes.fromhex("6220000180000000") + b"19" + PAN.encode() + b"300000" + FROM_PLATFORM,
    ),
    (
        "balance answer 0210 with 54",
        dict(KEY, mti="0210", resp="00", currency="156", balance="000000098766", sender=PLATFORM),
        # primary bitmap: 7 11 32 33 39 49 54
        answer(
            b"0210",
            "0220000182008400",
            b"00",  # 39  response code, an2
            b"156",  # 49
            # 54  additional amounts, LLLVAR: account type 00, amount type
            # 02 (available balance), currency 156, sign C, 12 digits
            b"020" b"00" b"02" b"156" b"C" b"000000098766",
        ),
    ),
    (
        "status inquiry 0200/330000",
        dict(KEY, mti="0200", proc="330000", orig=ORIG, sender=PLATFORM),
        # primary bitmap: 1 3 7 11 32 33; secondary: 90
        b"0200" + bytes.fromhex("A220000180000000") + SECONDARY_90 + b"330000" + FROM_PLATFORM + ORIGINAL,
    ),
    (
        "status answer 0210 with 44",
        dict(KEY, mti="0210", resp="00", state="reversed", sender=PLATFORM),
        # primary bitmap: 7 11 32 33 39 44
        answer(b"0210", "0220000182100000", b"00", b"08" b"reversed"),  # 44 LLVAR ans..25
    ),
    (
        "refund 0220/200000",
        dict(KEY, mti="0220", proc="200000", pan=PAN, amount="000000000500", currency="156",
             orig=ORIG, sender=PLATFORM),
        # primary bitmap: 1 2 3 4 7 11 32 33 49; secondary: 90
        b"0220" + bytes.fromhex("F220000180008000") + SECONDARY_90 + b"19" + PAN.encode()
        + b"200000" + b"000000000500" + FROM_PLATFORM + b"156" + ORIGINAL,
    ),
    (
        "refund answer 0230",
        dict(KEY, mti="0230", resp="00", sender=PLATFORM),
        answer(b"0230", "0220000182000000", b"00"),
    ),
    (
        "reversal 0420 carrying the card",
        dict(KEY, mti="0420", pan=PAN, amount="000000001234", currency="156", orig=ORIG, sender=PLATFORM),
        # primary bitmap: 1 2 4 7 11 32 33 49; secondary: 90
        b"0420" + bytes.fromhex("D220000180008000") + SECONDARY_90 + b"19" + PAN.encode()
        + b"000000001234" + FROM_PLATFORM + b"156" + ORIGINAL,
    ),
    (
        "reversal answer 0430",
        dict(KEY, mti="0430", resp="00", sender=PLATFORM),
        answer(b"0430", "0220000182000000", b"00"),
    ),
    (
        "notification 0820 from the payment side",
        dict(KEY, mti="0820", order="N-1", sender=PAYMENT),
        b"0820"
        # primary bitmap: 7 11 32 33 48
        + bytes.fromhex("0220000180010000")
        + b"0615103000" b"000123" b"08" b"20000002" b"08" b"20000002"
        + b"003" b"N-1",
    ),
    (
        "notification answer 0830",
        dict(KEY, mti="0830", resp="00", sender=PAYMENT),
        b"0830" + bytes.fromhex("0220000182000000")
        + b"0615103000" b"000123" b"08" b"20000002" b"08" b"20000002" + b"00",
    ),
]


class GoldenVectorTests(SynchronousTestCase):
    def setUp(self):
        self.codec = ISO8583Codec()

    def test_vectors_decode(self):
        for name, message, body in VECTORS:
            self.assertEqual(self.codec.decode(body), message, name)

    def test_vectors_encode(self):
        for name, message, body in VECTORS:
            self.assertEqual(self.codec.encode(message), body, name)

    def test_bcd_and_hex_bitmap(self):
        """
        BCD numerics (MTI in 2 bytes, lengths in 1, digits two a byte, odd
        counts padded with a leading 0) and a hex bitmap.
        """
        codec = ISO8583Codec(numeric="bcd", bitmap="hex")
        message = dict(KEY, mti="0800", nmi="001", sender=PLATFORM)
        body = (
            bytes.fromhex("0800")  # MTI, BCD
            + b"8220000180000000" + b"0400000000000000"  # bitmaps as hex text
            + bytes.fromhex("0615103000")  # 7, 5 bytes BCD
            + bytes.fromhex("000123")  # 11
            + bytes.fromhex("08" "10000001")  # 32, BCD length then digits
            + bytes.fromhex("08" "10000001")  # 33
            + bytes.fromhex("0001")  # 70, 3 digits padded to 0001
        )
        self.assertEqual(codec.encode(message), body)
        self.assertEqual(codec.decode(body), message)


def cupsHeader(total, destination, source, reject=b"00000"):
    """
    A CUPS header written out field by field.
    """
    return (
        bytes([46])  # header length, binary
        + bytes([0x01])  # header flag and version, binary
        + total  # total message length, 4 ASCII digits (header + body)
        + destination.ljust(11)  # destination institution id, space padded
        + source.ljust(11)  # source institution id
        + b"\0\0\0"  # reserved, binary
        + b"\0"  # batch number, binary
        + b"00000000"  # transaction information
        + b"\0"  # user information, binary
        + reject  # reject code
    )


SIGN_ON = VECTORS[0]
SIGN_ON_ANSWER = VECTORS[1]


class CUPSVectorTests(SynchronousTestCase):
    def test_request_and_swapped_answer(self):
        """
        The platform's sign-on goes from its id to the payment node's; the
        answer swaps them. 59 body bytes + 46 = 105; 61 + 46 = 107.
        """
        platform = CUPSCodec(source=PLATFORM, destination=PAYMENT)
        payment = CUPSCodec(source=PAYMENT, destination="")
        request = cupsHeader(b"0105", b"20000002", b"10000001") + SIGN_ON[2]
        self.assertEqual(platform.encode(SIGN_ON[1]), request)
        self.assertEqual(payment.decode(request), SIGN_ON[1])
        reply = cupsHeader(b"0107", b"10000001", b"20000002") + SIGN_ON_ANSWER[2]
        self.assertEqual(payment.encode(SIGN_ON_ANSWER[1]), reply)
        self.assertEqual(platform.decode(reply), SIGN_ON_ANSWER[1])

    def test_answer_swaps_what_the_request_said(self):
        """
        The ids of the request's header, not the payment node's settings,
        address its answer.
        """
        payment = CUPSCodec(source=PAYMENT, destination="99")
        request = cupsHeader(b"0105", b"30000003", b"40000004") + SIGN_ON[2]
        payment.decode(request)
        reply = payment.encode(SIGN_ON_ANSWER[1])
        self.assertEqual(reply[6:28], b"40000004   " b"30000003   ")

    def test_rejected_header(self):
        """
        A message sent back with a reject code (reject header, then the
        original header and body) is L{HeaderRejected} naming the key.
        """
        original = cupsHeader(b"0105", b"20000002", b"10000001") + SIGN_ON[2]
        rejected = cupsHeader(b"0151", b"10000001", b"20000002", reject=b"A0012") + original
        e = self.assertRaises(HeaderRejected, CUPSCodec(source=PLATFORM).decode, rejected)
        self.assertEqual((e.code, e.key, e.mti), ("A0012", (PLATFORM, "000123", TIME), "0800"))

    def test_reject_code_not_ascii(self):
        """
        A reject code that is not ASCII (found by the fuzzer) is a
        rejected header like any other, not a crash.
        """
        original = cupsHeader(b"0105", b"20000002", b"10000001") + SIGN_ON[2]
        rejected = cupsHeader(b"0151", b"10000001", b"20000002", reject=b"\xff\xff\xff\xff\xff") + original
        e = self.assertRaises(HeaderRejected, CUPSCodec(source=PLATFORM).decode, rejected)
        self.assertEqual(e.code, "\ufffd" * 5)

    def test_lengths_disagree(self):
        body = SIGN_ON[2]
        codec = CUPSCodec(source=PAYMENT)
        for bad in (
            cupsHeader(b"0104", b"2", b"1") + body,  # total one short
            cupsHeader(b"01x5", b"2", b"1") + body,  # total not digits
            bytes([45]) + cupsHeader(b"0105", b"2", b"1")[1:] + body,  # header length 45
            cupsHeader(b"0046", b"2", b"1")[:30],  # shorter than a header
        ):
            self.assertRaises(ProtocolViolation, codec.decode, bad)


class EncodeRefusalTests(SynchronousTestCase):
    def test_refusals(self):
        codec = ISO8583Codec()
        good = dict(KEY, mti="0200", proc="000000", sender=PLATFORM)
        for bad in (
            dict(good, sender="PLATFORM"),  # 32/33 are digits
            dict(good, amount="12"),  # n12 is fixed
            dict(good, pan="6" * 20),  # 2 is at most 19
            dict(good, note="x"),  # no field carries it
            dict(good, mti="02000"),
            dict(good, orig={"mti": "0200"}),
        ):
            self.assertRaises(CodecError, codec.encode, bad)

    def test_sender_must_be_digits(self):
        self.assertRaises(ValueError, makeCodec, "cups", sender="PAYMENT")
        self.assertRaises(ValueError, makeCodec, "xml")


def isoFrame(body):
    return b"%04d" % (len(body),) + body


class BadInputTests(SynchronousTestCase):
    """
    Bad ISO 8583 bodies on a payment link: C{30} when the key can be read,
    else a logged drop; the link stays up.
    """

    def setUp(self):
        self.s = SingleLink(codec="iso8583", sender=PAYMENT)
        self.events = Events(self)
        self.codec = self.s.settings.codec

    def received(self, body):
        self.s.transport.clear()
        self.s.link.dataReceived(isoFrame(body))
        out = [self.codec.fromFields(self.codec.readLeniently(b)) for b in wire.FrameDecoder(wire.getHeader("ascii4")).feed(self.s.transport.value())]
        self.assertFalse(self.s.transport.disconnecting)
        return out

    def test_unreadable_bitmap(self):
        self.assertEqual(self.received(b"0200\x72\x20"), [])
        hexCodec = SingleLink(codec="iso8583", sender=PAYMENT, iso_bitmap="hex")
        hexCodec.link.dataReceived(isoFrame(b"0800" + b"ZZZZZZZZZZZZZZZZ" + FROM_PLATFORM))
        self.assertEqual(hexCodec.transport.value(), b"")
        self.assertEqual(len(self.events.named("format-error")), 2)

    def test_field_longer_than_spec(self):
        # PAN of 25 digits: field 2 comes before the key, which is lost.
        body = b"0200" + bytes.fromhex("7220000180018000") + b"25" + b"6" * 25
        self.assertEqual(self.received(body), [])
        # Field 44 of 30 characters, after the key: answered 30.
        body = b"0800" + bytes.fromhex("8220000180100000") + SECONDARY_70 + FROM_PLATFORM + b"30" + b"x" * 30
        out = self.received(body)
        self.assertEqual([(m["mti"], m["resp"], m["stan"]) for m in out], [("0810", "30", "000123")])

    def test_missing_mandatory_field(self):
        # A 0200 without its processing code (3).
        body = b"0200" + bytes.fromhex("0220000180000000") + FROM_PLATFORM
        out = self.received(body)
        self.assertEqual([(m["mti"], m["resp"], m["sender"]) for m in out], [("0210", "30", PLATFORM)])
        self.assertIn("lacks proc", self.events.named("format-error")[0]["reason"])

    def test_unknown_mti(self):
        body = b"0100" + bytes.fromhex("0220000180000000") + FROM_PLATFORM
        out = self.received(body)
        self.assertEqual([(m["mti"], m["resp"]) for m in out], [("0110", "30")])
        self.assertIn("unknown message type 0100", self.events.named("format-error")[0]["reason"])

    def test_trailing_bytes(self):
        body = VECTORS[2][2] + b"junk"
        out = self.received(body)
        self.assertEqual([(m["mti"], m["resp"]) for m in out], [("0810", "30")])

    def test_cups_lengths_disagree_is_a_violation(self):
        s = SingleLink(codec="cups", sender=PAYMENT)
        s.link.dataReceived(isoFrame(cupsHeader(b"0999", b"2", b"1") + SIGN_ON[2]))
        self.assertTrue(s.transport.disconnecting)
        self.assertIn("CUPS total length", self.events.named("violation")[0]["reason"])


class HeaderRejectedOnLinkTests(SynchronousTestCase):
    def test_request_fails_with_the_reject_code(self):
        """
        The peer sends our 0820 back with its header rejected: logged, and
        the request fails with L{HeaderRejected} carrying the code.
        """
        s = SingleLink(codec="cups", sender=PAYMENT)
        events = Events(self)
        peer = CUPSCodec(source=PLATFORM, destination=PAYMENT)
        s.link.dataReceived(isoFrame(peer.encode(SIGN_ON[1])))
        self.assertEqual(s.link.state, "ready")
        s.transport.clear()
        d = s.link.request({"mti": "0820", "order": "N-1"})
        sent = s.transport.value()[4:]
        total = b"%04d" % (46 + len(sent),)
        s.link.dataReceived(isoFrame(cupsHeader(total, b"20000002", b"10000001", reject=b"B0001") + sent))
        failure = self.failureResultOf(d, HeaderRejected)
        self.assertEqual(failure.value.code, "B0001")
        self.assertEqual(failure.value.key[0], PAYMENT)
        self.assertEqual(len(events.named("header-rejected")), 1)
        self.assertEqual(s.link.inFlight(), 0)
        self.assertFalse(s.transport.disconnecting)


class EndpointCodecTests(SynchronousTestCase):
    def test_platform_endpoints_with_their_own_codecs(self):
        from twisted.internet.task import Clock

        from tvlink.platform.service import PlatformService

        service = PlatformService(
            ["127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"],
            reactor=Clock(),
            sender=PLATFORM,
            codec="iso8583",
            endpoint_codecs={"127.0.0.1:7001": "cups", "127.0.0.1:7002": "json"},
        )
        names = [(f.endpoint, (f.codec or service.settings.codec).name) for f in service.factories]
        self.assertEqual(
            names, [("127.0.0.1:7000", "iso8583"), ("127.0.0.1:7001", "cups"), ("127.0.0.1:7002", "json")]
        )

    def test_command_line(self):
        from twisted.python import usage

        from tvlink.cli.tap import Options

        o = Options()
        o.parseOptions(["platform", "--connect", "127.0.0.1:7000", "--sender", PLATFORM, "--codec", "cups",
                        "--endpoint-codec", "127.0.0.1:7000=iso8583", "--heartbeat-frame", "echo"])
        options = o.subOptions.linkOptions
        self.assertEqual((options["codec"], options["heartbeat_frame"]), ("cups", "echo"))
        self.assertEqual(options["endpoint_codecs"], {"127.0.0.1:7000": "iso8583"})
        for bad in (
            ["--codec", "iso8583"],  # the default sender PLATFORM is not digits
            ["--sender", PLATFORM, "--codec", "xml"],
            ["--sender", PLATFORM, "--heartbeat-frame", "loud"],
            ["--sender", PLATFORM, "--endpoint-codec", "127.0.0.1:7000=cobol"],
        ):
            self.assertRaises(usage.UsageError, Options().parseOptions, ["platform", "--connect", "127.0.0.1:7000"] + bad)
