"""
A coverage-guided fuzz target (atheris, libFuzzer) for what a peer's bytes
reach first: L{tvlink.link.wire.FrameDecoder}, L{tvlink.link.wire.JSONCodec} (the
orjson build and the standard-library one), L{tvlink.link.wire.salvageKey}, and
the ISO 8583 codecs (L{tvlink.link.iso8583}, L{tvlink.link.cups}: ASCII with a
binary bitmap, BCD with a hex bitmap, and the CUPS header).

The first byte of each input chooses the header (ascii4, bin2, bin4), the
maximum frame size and the size of the pieces the rest is fed in; the
rest is the byte stream. Checked on every input:

- the decoder raises nothing but L{ProtocolViolation}, and gives the same
  frames and verdict in pieces as in one go;
- every frame body, and the whole stream as one body, decodes to a dict
  or fails with L{CodecError}; what decodes encodes and decodes again to
  the same thing, and both codec builds read each other's output;
- C{salvageKey} never raises, on the body or on the decoded dict, and
  salvages only a request key of strings.

Anything else raised is a crash: libFuzzer stops and writes the input to
C{crash-*} (in C{-artifact_prefix}, default the current folder).

The target runs with a low recursion limit (L{RECURSION_LIMIT}). The
standard library's JSON decoder (C code the fuzzer cannot see into)
counts nesting against that limit, so with the default of 1000 a
nesting-depth bug needs ~1000 brackets in a row, which libFuzzer's
mutations never build without coverage to guide them; at 64 (some 50
levels left for the input) one "insert repeated bytes" mutation, which
inserts up to 128 bytes, reaches it. A C{RecursionError} found so
is real: the same path fails at the default limit on a ~1000-byte body,
which an ascii4 frame (up to 9999 bytes) carries. (It found one: the
decoder now turns it into a format error.)

Install atheris with C{pip install atheris}, then from the checkout:

    python fuzz/fuzz_decoder.py -atheris_runs=20000          # a brief run (CI)
    python fuzz/fuzz_decoder.py -max_total_time=3600 CORPUS/  # at length, keeping a corpus
    python fuzz/fuzz_decoder.py crash-...                     # replay one input
"""

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with atheris.instrument_imports(include=["tvlink", "iso8583"]):
    from tvlink.errors import CodecError, HeaderRejected, ProtocolViolation
    from tvlink.link import wire
    from tvlink.link import cups, iso8583

#: See the module docstring.
RECURSION_LIMIT = 64


HEADERS = [wire.HEADERS[name] for name in ("ascii4", "bin2", "bin4")]
MAX_FRAMES = [16, 300, 9999, wire.DEFAULT_MAX_FRAME]
CODECS = [wire.JSONCodec(), wire.JSONCodec(fast=False)]
#: The ISO 8583 codecs: the default layout, BCD with a hex bitmap, and the
#: CUPS header in front of the default layout.
ISO_CODECS = [
    iso8583.ISO8583Codec(),
    iso8583.ISO8583Codec(numeric="bcd", bitmap="hex"),
    cups.CUPSCodec(source="10000001", destination="20000002", iso=iso8583.ISO8583Codec()),
]


def decodeStream(header, maxFrame, chunks):
    decoder = wire.FrameDecoder(header, maxFrame)
    bodies = []
    for chunk in chunks:
        try:
            bodies.extend(decoder.feed(chunk))
        except ProtocolViolation:
            return bodies, True
    return bodies, decoder.broken is not None


def checkSalvaged(found):
    if found is None:
        return
    if not (
        type(found) is dict
        and wire.isValidMTI(found.get("mti"))
        and not wire.isResponse(found["mti"])
        and type(found.get("sender")) is str
        and type(found.get("stan")) is str
    ):
        raise AssertionError("salvageKey salvaged %r" % (found,))


def decodeChecked(codec, body, refusals):
    """
    C{codec}'s message dict for C{body}, or C{None} when it is refused
    with one of C{refusals}; then the dict encoded again, or C{None} when
    the codec cannot write it back (the link answers such a request 96).
    """
    try:
        message = codec.decode(body)
    except refusals:
        return None, None
    if type(message) is not dict:
        raise AssertionError("decode gave %r" % (type(message),))
    try:
        return message, codec.encode(message)
    except CodecError:
        return message, None


def checkBody(body):
    for codec in CODECS:
        message, encoded = decodeChecked(codec, body, CodecError)
        if message is None:
            continue
        if encoded is not None:
            for other in CODECS:
                again = other.decode(encoded)
                if codec.encode(again) != encoded:
                    raise AssertionError("round trip changed %r" % (message,))
        checkSalvaged(wire.salvageKey(message))
    checkSalvaged(wire.salvageKey(body))


def checkISO(body):
    """
    An ISO 8583 body decodes to a message dict or fails with
    L{CodecError} (a CUPS header whose lengths disagree: with
    L{ProtocolViolation}; one with a reject code: L{HeaderRejected},
    which the link logs and answers); a message that decodes and encodes again
    decodes to the same dict; salvaging a key never raises.
    """
    for codec in ISO_CODECS:
        message, encoded = decodeChecked(codec, body, (CodecError, ProtocolViolation, HeaderRejected))
        if encoded is not None and codec.decode(encoded) != message:
            raise AssertionError("round trip changed %r" % (message,))
        codec.salvage(body)


def TestOneInput(data):
    if data:
        checkInput(data)


def checkInput(data):
    mode = data[0]
    header = HEADERS[mode % 3]
    maxFrame = MAX_FRAMES[(mode // 3) % 4]
    step = mode // 12 + 1
    stream = data[1:]
    whole = decodeStream(header, maxFrame, [stream])
    pieces = decodeStream(
        header, maxFrame, [stream[i : i + step] for i in range(0, len(stream), step)] or [b""]
    )
    if whole != pieces:
        raise AssertionError("feeding in pieces of %d changed the frames" % (step,))
    for body in whole[0]:
        checkBody(body)
        checkISO(body)
    checkBody(stream)
    checkISO(stream)


def main():
    sys.setrecursionlimit(RECURSION_LIMIT)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
