"""
What every link of one service shares (L{LinkSettings}), and the checks
the options go through on their way in.
"""

import time

from twisted.internet.defer import Deferred

from tvlink.link import wire
from tvlink.link.codecs import checkHeartbeatFrame, makeCodec

PLATFORM = "platform"


PAYMENT = "payment"


class LinkSettings:
    """
    What every link of one service shares: framing, timers, the local
    sender id and its STAN allocator, and the clock.

    Option names follow the command line (C{heartbeat}, C{idle_timeout},
    C{timeout}, C{header}, C{max_frame}, C{frame_timeout}, C{sender},
    C{max_in_flight}, C{max_handling}, C{max_batch}, C{codec},
    C{heartbeat_frame}, C{iso_numeric}, C{iso_bitmap},
    C{cups_destination}).

    C{max_batch} is how many frames a link handles in one turn of the
    reactor: what that batch writes leaves in one write before the next
    batch of the same read is handled, so the peer works on it meanwhile,
    and one busy link cannot hold the reactor from the others.
    """

    def __init__(
        self,
        reactor=None,
        heartbeat=60.0,
        idle_timeout=180.0,
        timeout=40.0,
        header="ascii4",
        max_frame=wire.DEFAULT_MAX_FRAME,
        frame_timeout=30.0,
        close_timeout=5.0,
        sender="00000000",
        codec=None,
        localtime=time.localtime,
        max_in_flight=1000,
        max_handling=1000,
        max_batch=12,
        heartbeat_frame="empty",
        iso_numeric="ascii",
        iso_bitmap="binary",
        cups_destination="",
    ):
        self.reactor = reactor if reactor is not None else globalReactor()
        self.heartbeat = positive("heartbeat", heartbeat)
        self.idle_timeout = positive("idle_timeout", idle_timeout)
        self.timeout = positive("timeout", timeout)
        self.frame_timeout = positive("frame_timeout", frame_timeout)
        self.close_timeout = positive("close_timeout", close_timeout)
        self.header = wire.getHeader(header) if isinstance(header, str) else header
        if int(max_frame) < 1:
            raise ValueError("max_frame must be at least 1, not %r" % (max_frame,))
        self.max_frame = int(max_frame)
        if not isinstance(sender, str) or not sender or not sender.isascii():
            raise ValueError("sender must be a non-empty ASCII string, not %r" % (sender,))
        self.sender = sender
        #: How the codecs named by L{makeCodec} are built (see L{codecFor}).
        self.codecOptions = {"numeric": iso_numeric, "bitmap": iso_bitmap, "destination": cups_destination}
        self.codec = self.codecFor(codec if codec is not None else "json")
        self.heartbeat_frame = checkHeartbeatFrame(heartbeat_frame)
        self.max_in_flight = atLeast("max_in_flight", max_in_flight, 1)
        self.max_handling = atLeast("max_handling", max_handling, 1)
        self.max_batch = atLeast("max_batch", max_batch, 1)
        # Start where the clock says, so a restarted node does not walk the
        # STANs it used earlier in the day again straight away.
        self.stans = wire.StanAllocator(start=int(self.reactor.seconds() * 10) % wire.StanAllocator.modulus + 1)
        self.localtime = localtime

    def codecFor(self, codec):
        """
        C{codec} itself, or the codec it names (C{json}, C{iso8583},
        C{cups}) built for this node's sender.
        """
        if not isinstance(codec, str):
            return codec
        return makeCodec(codec, sender=self.sender, **self.codecOptions)

    _timeCache = (None, None)

    def transmissionTime(self):
        """
        The C{MMDDhhmmss} of now (formatted once per second).
        """
        second = int(self.reactor.seconds())
        cached, text = self._timeCache
        if cached != second:
            text = wire.formatTransmissionTime(second, self.localtime)
            self._timeCache = (second, text)
        return text

    def stamp(self, message):
        """
        Return a copy of C{message} with C{sender}, C{stan} and C{time}
        filled in where missing, and the STAN it allocated (or C{None}).
        The caller releases that STAN with C{self.stans.release} when the
        request is over.
        """
        message = dict(message)
        allocated = None
        if "sender" not in message:
            message["sender"] = self.sender
        if "stan" not in message:
            allocated = message["stan"] = self.stans.allocate()
        if "time" not in message:
            second, text = self._timeCache
            if second != int(self.reactor.seconds()):
                text = self.transmissionTime()
            message["time"] = text
        return message, allocated


def globalReactor():
    """
    The global reactor, imported only when a caller injected none.
    """
    import twisted.internet.reactor

    return twisted.internet.reactor


def atLeast(name, value, least):
    """
    C{value} as an int of at least C{least}, or a L{ValueError} naming
    C{name}.
    """
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("%s must be a whole number, not %r" % (name, value)) from None
    if number < least or number != value and not isinstance(value, str):
        raise ValueError("%s must be a whole number of at least %d, not %r" % (name, least, value))
    return number


def positive(name, value):
    """
    C{value} as a positive float, or a L{ValueError} naming C{name}.
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError("%s must be a number of seconds, not %r" % (name, value)) from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("%s must be a positive number of seconds, not %r" % (name, value))
    return value


def succeedWith(result):
    d = Deferred()
    d.callback(result)
    return d
