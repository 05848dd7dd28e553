"""
The codec options of the twistd roles: C{--codec} and its encodings,
C{--heartbeat-frame}, and the platform's C{--endpoint-codec}.
"""

from twisted.python import usage

from tvlink.link.codecs import CODECS, HEARTBEAT_FRAMES, checkHeartbeatFrame, makeCodec


class CodecOptions(usage.Options):
    """
    C{--codec}, C{--iso-numeric}, C{--iso-bitmap}, C{--cups-destination}
    and C{--heartbeat-frame}; L{_codecOptions} checks them and puts them
    in C{linkOptions}.
    """

    optParameters = [
        ["codec", None, "json", "Message codec: %s (ISO 8583:1987 body; CUPS header + ISO 8583)" % (", ".join(CODECS),)],
        ["iso-numeric", None, "ascii", "ISO 8583 MTI, numeric fields and lengths: ascii or bcd"],
        ["iso-bitmap", None, "binary", "ISO 8583 bitmap: binary (8 bytes) or hex (16 characters)"],
        ["cups-destination", None, "", "CUPS header destination id of the requests this node starts"],
        [
            "heartbeat-frame",
            None,
            "empty",
            "Write-idle link check: %s (a 0000 frame, or an 0800/301 echo test)" % (" or ".join(HEARTBEAT_FRAMES),),
        ],
    ]

    def _codecOptions(self):
        """
        Check C{--codec}, its encodings and C{--heartbeat-frame} by building
        the codec for this node's sender.
        """
        self.codecOptions = {
            "numeric": self["iso-numeric"],
            "bitmap": self["iso-bitmap"],
            "destination": self["cups-destination"],
        }
        try:
            makeCodec(self["codec"], sender=self["sender"], **self.codecOptions)
            checkHeartbeatFrame(self["heartbeat-frame"])
        except ValueError as e:
            raise usage.UsageError("--codec: %s" % (e,)) from None
        self.linkOptions.update(
            codec=self["codec"],
            iso_numeric=self["iso-numeric"],
            iso_bitmap=self["iso-bitmap"],
            cups_destination=self["cups-destination"],
            heartbeat_frame=self["heartbeat-frame"],
        )



class EndpointCodecOptions(usage.Options):
    """
    The platform's C{--endpoint-codec HOST:PORT=CODEC}, repeatable.
    """

    def endpointCodecsInit(self):
        self["endpoint-codec"] = {}

    def opt_endpoint_codec(self, value):
        """
        HOST:PORT=CODEC: this endpoint's codec, overriding --codec (repeat
        for more)
        """
        from tvlink.platform.endpoints import parseEndpoint

        endpoint, _, codec = value.rpartition("=")
        try:
            host, port = parseEndpoint(endpoint)
        except ValueError as e:
            raise usage.UsageError("--endpoint-codec: %s" % (e,)) from None
        self["endpoint-codec"]["%s:%d" % (host, port)] = codec

    def _endpointCodecs(self):
        for endpoint, codec in self["endpoint-codec"].items():
            try:
                makeCodec(codec, sender=self["sender"], **self.codecOptions)
            except ValueError as e:
                raise usage.UsageError("--endpoint-codec %s: %s" % (endpoint, e)) from None
        if self["endpoint-codec"]:
            self.linkOptions["endpoint_codecs"] = dict(self["endpoint-codec"])
