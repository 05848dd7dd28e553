"""
The C{iso8583} codec: a plain ISO 8583:1987 body after the link's length
header, carrying the same message C{dict}s as the JSON codec.

The bytes go through pyiso8583 with a field spec of our own
(L{makeSpec}); L{FIELDS} says which WIRE.md name sits in which field.
Nothing here does I/O.
"""

import copy

import iso8583
from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError
from iso8583.specs import default as _pyisoDefault

from tvlink.errors import CodecError
from tvlink.link import wire

#: WIRE.md name -> ISO 8583 field. C{sender} is written to both 32
#: (acquiring) and 33 (forwarding) and read from 33, else 32; C{orig} is
#: field 90, C{mti} the message type.
FIELDS = {
    "pan": "2",
    "proc": "3",
    "amount": "4",
    "time": "7",
    "stan": "11",
    "resp": "39",
    # Additional response data: ISO's own place for extra answer data, and
    # every state WIRE.md names fits its 25 characters.
    "state": "44",
    # Additional data, private: the order id has no ISO field of its own,
    # and merchant order ids (often 32 characters) do not fit field 37's 12.
    "order": "48",
    "currency": "49",
    "balance": "54",
    "nmi": "70",
}

#: Fields whose content is decimal digits (n), checked both ways.
NUMERIC = frozenset(("2", "3", "4", "7", "11", "32", "33", "49", "70", "90"))

#: Fixed lengths of the numeric fixed fields (checked on encode, since
#: pyiso8583 pads nothing).
FIXED = {"3": 6, "4": 12, "7": 10, "11": 6, "49": 3, "70": 3, "90": 42}

#: The message types the codec accepts on input.
KNOWN_MTIS = wire.REQUEST_MTIS | wire.RESPONSE_MTIS

#: Field 54: account type 00, amount type 02 (available balance).
BALANCE_PREFIX = "0002"

INSTITUTION_WIDTH = 11

_OWN = {
    "2": ("LLVAR", 19, "Primary account number"),
    "3": ("fixed", 6, "Processing code"),
    "4": ("fixed", 12, "Amount, transaction"),
    "7": ("fixed", 10, "Transmission date and time"),
    "11": ("fixed", 6, "System trace audit number"),
    "32": ("LLVAR", 11, "Acquiring institution id"),
    "33": ("LLVAR", 11, "Forwarding institution id"),
    "39": ("fixed", 2, "Response code"),
    "44": ("LLVAR", 25, "Additional response data (tvlink: state)"),
    "48": ("LLLVAR", 999, "Additional data, private (tvlink: order)"),
    "49": ("fixed", 3, "Currency code, transaction"),
    "54": ("LLLVAR", 120, "Additional amounts (tvlink: balance)"),
    "70": ("fixed", 3, "Network management information code"),
    "90": ("fixed", 42, "Original data elements (tvlink: orig)"),
}

_LENGTH_DIGITS = {"fixed": 0, "LLVAR": 2, "LLLVAR": 3}


def makeSpec(numeric="ascii", bitmap="binary"):
    """
    The pyiso8583 spec: pyiso8583's own binary-bitmap spec for the fields
    tvlink does not use (so a host's extra fields still decode), ours for
    the rest.

    @param numeric: C{ascii} or C{bcd}, for the MTI, numeric fields and
        variable-length prefixes.
    @param bitmap: C{binary} (8 bytes each) or C{hex} (16 characters).
    """
    if numeric not in ("ascii", "bcd"):
        raise ValueError("numeric encoding must be ascii or bcd, not %r" % (numeric,))
    if bitmap not in ("binary", "hex"):
        raise ValueError("bitmap must be binary or hex, not %r" % (bitmap,))
    spec = copy.deepcopy(_pyisoDefault)
    bcd = numeric == "bcd"
    for field in ("p", "1"):
        spec[field] = dict(spec[field], data_enc="b" if bitmap == "binary" else "ascii",
                           max_len=8 if bitmap == "binary" else 16)
    spec["t"] = _field("fixed", 4, "Message type", bcd, True)
    for number, (kind, size, desc) in _OWN.items():
        spec[number] = _field(kind, size, desc, bcd, number in NUMERIC)
    for number, field in spec.items():
        if number not in _OWN and field["len_type"] and bcd:
            # A host with BCD numerics has BCD length prefixes throughout.
            spec[number] = dict(field, len_enc="bcd", len_type=(field["len_type"] + 1) // 2)
    return spec


def _field(kind, size, desc, bcd, numeric):
    digits = _LENGTH_DIGITS[kind]
    field = {"data_enc": "ascii", "len_enc": "ascii", "len_type": digits, "max_len": size, "desc": desc}
    if bcd:
        if digits:
            field["len_enc"] = "bcd"
            field["len_type"] = (digits + 1) // 2
        if numeric:
            field.update(data_enc="b", len_count="nibbles", left_pad="0")
    return field


class ISO8583Codec:
    """
    Message C{dict}s to and from ISO 8583:1987 bodies; the same interface
    as L{tvlink.link.wire.JSONCodec}, and L{salvage} for the C{30} answer.
    """

    name = "iso8583"

    def __init__(self, numeric="ascii", bitmap="binary"):
        self.numeric = numeric
        self.bitmap = bitmap
        self.spec = makeSpec(numeric, bitmap)

    # -- encoding ---------------------------------------------------------

    def encode(self, message):
        """
        Encode a message C{dict} to bytes.

        @raise CodecError: for a field it has no place for or a value that
            does not fit its field.
        """
        return self.encodeFields(self.toFields(message))

    def encodeFields(self, fields):
        """
        Encode pyiso8583 fields (C{"t"}, C{"2"} ...) to bytes.
        """
        try:
            raw, _ = iso8583.encode(fields, self.spec)
        except EncodeError as e:
            raise CodecError("message cannot be encoded as ISO 8583: %s" % (e,)) from None
        return bytes(raw)

    def toFields(self, message):
        """
        The pyiso8583 fields of a message C{dict}.
        """
        if type(message) is not dict:
            raise CodecError("a message is a dict, not %r" % (type(message).__name__,))
        fields = {}
        for name, value in message.items():
            if name == "mti":
                if not wire.isValidMTI(value):
                    raise CodecError("mti %r is not four digits" % (value,))
                fields["t"] = value
                continue
            if name == "sender":
                value = _institution(value, "sender")
                fields["32"] = fields["33"] = value
                continue
            if name == "orig":
                fields["90"] = _originalElements(value)
                continue
            if name == "balance":
                value = _text(value, name)
                if not (len(value) == 12 and value.isdigit()):
                    raise CodecError("balance %r is not 12 digits" % (value,))
                currency = message.get("currency", "156")
                fields["54"] = BALANCE_PREFIX + str(currency) + "C" + value
                continue
            number = FIELDS.get(name)
            if number is None:
                raise CodecError("no ISO 8583 field carries %r" % (name,))
            value = _text(value, name)
            if number in NUMERIC and not (value.isdigit() and value.isascii()):
                raise CodecError("%s %r is not decimal digits" % (name, value))
            size = FIXED.get(number)
            if size is not None and len(value) != size:
                raise CodecError("%s %r is not %d digits" % (name, value, size))
            fields[number] = value
        if "t" not in fields:
            raise CodecError("message has no mti")
        return fields

    # -- decoding ---------------------------------------------------------

    def decode(self, body):
        """
        Decode bytes to a message C{dict}.

        @raise CodecError: for an unreadable bitmap, a field longer than
            its spec, trailing bytes, an unknown MTI or a missing mandatory
            field.
        """
        try:
            fields, _ = iso8583.decode(bytes(body), self.spec)
        except DecodeError as e:
            raise CodecError("body is not ISO 8583: %s" % (e,)) from None
        message = self.fromFields(fields)
        mti = message["mti"]
        if mti not in KNOWN_MTIS:
            raise CodecError("unknown message type %s" % (mti,))
        missing = [name for name in mandatory(mti) if name not in message]
        if missing:
            raise CodecError("%s lacks %s" % (mti, ", ".join(missing)))
        for number in NUMERIC:
            value = fields.get(number)
            if value is not None and not value.isdigit():
                raise CodecError("field %s is not decimal digits" % (number,))
        return message

    def fromFields(self, fields):
        """
        The message C{dict} of decoded pyiso8583 fields (what of it there
        is: this is also the salvage path).
        """
        message = {}
        if "t" in fields:
            message["mti"] = fields["t"]
        sender = fields.get("33", fields.get("32"))
        if sender is not None:
            message["sender"] = sender
        for name, number in FIELDS.items():
            value = fields.get(number)
            if value is not None:
                message[name] = value
        if "balance" in message:
            amounts = message["balance"]
            # The first amount block: type (4), currency (3), sign, 12 digits.
            if len(amounts) >= 20 and amounts[8:20].isdigit():
                message["balance"] = amounts[8:20]
        if "90" in fields:
            message["orig"] = _readOriginal(fields["90"], sender)
        return message

    def salvage(self, body):
        """
        The key and MTI of a body that did not decode, read as far as it
        goes (see L{tvlink.link.wire.salvageKey}), or C{None}.
        """
        if isinstance(body, dict):
            return wire.salvageKey(body)
        try:
            fields = self.readLeniently(body)
        except Exception:
            return None
        return wire.salvageKey(self.fromFields(fields))

    def readLeniently(self, body):
        """
        The pyiso8583 fields of C{body} as far as they decode.
        """
        try:
            return iso8583.decode(bytes(body), self.spec)[0]
        except DecodeError as e:
            return e.doc_dec


def mandatory(mti):
    """
    The WIRE.md names a message of type C{mti} must carry.
    """
    names = ["sender", "stan"]
    if mti in wire.RESPONSE_MTIS:
        names.append("resp")
    if mti in ("0800", "0810"):
        names.append("nmi")
    elif mti in ("0200", "0220"):
        names.append("proc")
    if mti == "0420":
        names.append("orig")
    return names


def _text(value, name):
    if type(value) is not str:
        raise CodecError("%s must be a string, not %r" % (name, type(value).__name__))
    return value


def _institution(value, name):
    value = _text(value, name)
    if not (value.isdigit() and value.isascii() and len(value) <= INSTITUTION_WIDTH):
        raise CodecError("%s %r is not an institution id of 1 to 11 digits" % (name, value))
    return value


def _originalElements(orig):
    """
    Field 90: original MTI (4), STAN (6), transmission time (10),
    acquiring and forwarding institution ids (11 each, zero filled).
    """
    if type(orig) is not dict:
        raise CodecError("orig must be an object")
    try:
        sender = _institution(orig["sender"], "orig sender").zfill(INSTITUTION_WIDTH)
        text = _text(orig["mti"], "orig mti") + _text(orig["stan"], "orig stan") + _text(
            orig.get("time", "0000000000"), "orig time"
        )
    except KeyError as e:
        raise CodecError("orig lacks %s" % (e,)) from None
    text += sender + sender
    if len(text) != 42 or not text.isdigit():
        raise CodecError("orig %r does not make 42 digits of field 90" % (orig,))
    return text


def _readOriginal(text, sender):
    """
    C{orig} from field 90. The institution ids there are zero filled to 11
    digits: the original sender is the message's own C{sender} when they
    are the same number, else the id without its filler.
    """
    institution = text[31:42] if text[31:42].strip("0") else text[20:31]
    if sender is not None and sender.isdigit() and institution.isdigit() and int(sender) == int(institution):
        original = sender
    else:
        original = institution.lstrip("0") or "0"
    return {"mti": text[0:4], "sender": original, "stan": text[4:10], "time": text[10:20]}
