"""
A coverage-guided fuzz target (atheris, libFuzzer) for what a peer's bytes
reach first: L{tvlink.link.wire.FrameDecoder}, L{tvlink.link.wire.JSONCodec} (the
orjson build and the standard-library one) and L{tvlink.link.wire.salvageKey}.

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

with atheris.instrument_imports(include=["tvlink"]):
    from tvlink.link import wire
    from tvlink.errors import CodecError, ProtocolViolation

#: See the module docstring.
RECURSION_LIMIT = 64


HEADERS = [wire.HEADERS[name] for name in ("ascii4", "bin2", "bin4")]
MAX_FRAMES = [16, 300, 9999, wire.DEFAULT_MAX_FRAME]
CODECS = [wire.JSONCodec(), wire.JSONCodec(fast=False)]


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


def checkBody(body):
    for codec in CODECS:
        try:
            message = codec.decode(body)
        except CodecError:
            message = None
        if message is not None:
            if type(message) is not dict:
                raise AssertionError("decode gave %r" % (type(message),))
            try:
                encoded = codec.encode(message)
            except CodecError:
                # Decodable but not encodable (e.g. a number orjson cannot
                # write back): the link answers such a request 96.
                encoded = None
            if encoded is not None:
                for other in CODECS:
                    again = other.decode(encoded)
                    if codec.encode(again) != encoded:
                        raise AssertionError("round trip changed %r" % (message,))
            checkSalvaged(wire.salvageKey(message))
    checkSalvaged(wire.salvageKey(body))


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
    checkBody(stream)


def main():
    sys.setrecursionlimit(RECURSION_LIMIT)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
