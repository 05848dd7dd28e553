"""
The message codecs by name: C{json} (the default), C{iso8583} and
C{cups}, and the link-check frames a link may write when write-idle.
"""

from tvlink.link import wire

CODECS = ("json", "iso8583", "cups")

#: What a write-idle link sends: WIRE.md's empty frame, or an 0800/301
#: echo test for hosts that do not accept empty frames.
HEARTBEAT_FRAMES = ("empty", "echo")


def makeCodec(name, sender=None, numeric="ascii", bitmap="binary", destination=""):
    """
    The codec called C{name}.

    @param sender: this node's institution id; under C{iso8583} and
        C{cups} it is fields 32 and 33, so 1 to 11 digits.
    @param numeric: C{ascii} or C{bcd} (ISO 8583 codecs).
    @param bitmap: C{binary} or C{hex} (ISO 8583 codecs).
    @param destination: the peer's institution id for the CUPS header of
        requests this node starts.
    @raise ValueError: for an unknown name or option, or a sender the
        codec cannot carry.
    """
    if name == "json":
        return wire.JSONCodec()
    if name not in CODECS:
        raise ValueError("unknown codec %r (choose one of %s)" % (name, ", ".join(CODECS)))
    if sender is not None and not (sender.isdigit() and sender.isascii() and len(sender) <= 11):
        raise ValueError(
            "under the %s codec the sender is ISO 8583 fields 32/33: 1 to 11 digits, not %r"
            % (name, sender)
        )
    from tvlink.link.iso8583 import ISO8583Codec

    iso = ISO8583Codec(numeric=numeric, bitmap=bitmap)
    if name == "iso8583":
        return iso
    from tvlink.link.cups import CUPSCodec

    try:
        return CUPSCodec(source=sender or "", destination=destination or "", iso=iso)
    except Exception as e:
        raise ValueError("CUPS header: %s" % (e,)) from None


def checkHeartbeatFrame(value):
    if value not in HEARTBEAT_FRAMES:
        raise ValueError(
            "heartbeat frame must be one of %s, not %r" % (", ".join(HEARTBEAT_FRAMES), value)
        )
    return value
