"""
Two mixins of L{tvlink.link.protocol.LinkProtocol} for the hosts that
already exist: L{Heartbeat}, the link check a write-idle link sends (an
empty frame, or an echo test for hosts that take no empty frames), and
L{Rejections}, the requests whose CUPS header the peer rejected.
"""

from tvlink.errors import CodecError, RequestError, StanExhausted
from tvlink.link import wire


class Heartbeat:
    """
    What a link writes when it has written nothing for C{heartbeat}
    seconds (L{tvlink.link.idle.IdleTimeout} calls L{writeIdle}).
    """

    _echoing = False

    def writeIdle(self):
        if self.factory.settings.heartbeat_frame == "echo":
            self._sendEchoHeartbeat()
            return
        self.transport.write(self._header.encode(0))
        self.counters["heartbeatsOut"] += 1
        self.counters["framesOut"] += 1

    def _sendEchoHeartbeat(self):
        """
        The link check for hosts that take no empty frames: an 0800/301
        echo test, one at a time; its answer is traffic like any other.
        """
        if self._echoing or self.state not in ("up", "ready"):
            return
        try:
            d = self.request({"mti": "0800", "nmi": wire.ECHO_TEST})
        except (RequestError, CodecError, StanExhausted) as e:
            self.log.warn("link {peer} cannot send its echo heartbeat: {why}", peer=self.peer, why=str(e))
            return
        self._echoing = True
        self.counters["heartbeatsOut"] += 1
        d.addErrback(
            lambda f: self.log.warn(
                "echo heartbeat on {peer} failed: {why}", peer=self.peer, why=f.getErrorMessage()
            )
        )
        d.addBoth(self._echoEnded)

    def _echoEnded(self, result):
        self._echoing = False



class Rejections:
    """
    Requests the peer sent back with their CUPS header rejected.
    """

    def headerRejected(self, rejected):
        """
        The peer sent back one of our messages with its CUPS header
        rejected: log it, and fail the request it was with the reject code.
        """
        self.log.warn(
            "peer {peer} rejected the header of {mti} {key}: reject code {code}",
            link_event="header-rejected",
            peer=self.peer,
            mti=rejected.mti,
            key=wire.keyText(rejected.key) if rejected.key else "(unreadable)",
            code=rejected.code,
        )
        try:
            entry = self.pending.entries.pop(rejected.key, None) if rejected.key else None
        except TypeError:
            entry = None
        if entry is None:
            return
        d, seq, sentAt, timeout, stan = entry
        if stan is not None:
            self._releaseStan(stan)
        self.pending.settle()
        d.errback(rejected)
