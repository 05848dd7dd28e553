"""
L{Backpressure}: a link stops reading from a peer that does not read what
it is sent, and drops it if that lasts.

The link registers itself as the transport's streaming producer: when
the transport's buffer toward the peer is full it pauses the link, which
pauses reading; a peer that reads nothing for C{idle_timeout} seconds is
dropped as a protocol violation. Reading is also paused while frames
already read wait for their turn (the link's backlog); each reason is a
bit, and reading resumes when none is left.
"""

#: Why a link stopped reading: the peer does not read our frames.
UNREAD = 1
#: Why a link stopped reading: frames already read wait for their turn.
BACKLOG = 2


class Backpressure:
    """
    Mixed into L{tvlink.link.protocol.LinkProtocol}, whose C{transport},
    C{state}, C{idleTimeout}, C{_clock} and C{protocolViolation} it uses.
    """

    _pausedCall = None

    #: Whether to watch the transport's buffer from the start (under TLS
    #: only once the handshake is done: TLS pauses its producer while the
    #: handshake runs, and we must not stop reading then).
    backpressureAtConnect = True

    def watchBackpressure(self):
        """
        Answers to a peer that does not read them back up in the
        transport: it then pauses us, and we stop reading its requests.
        """
        self.transport.registerProducer(self, True)
        self._watching = True

    _watching = False

    def pauseProducing(self):
        """
        The transport's buffer toward the peer is full: read nothing more
        from it until it drains; a peer that reads nothing for
        C{idle_timeout} is dropped.
        """
        self._pauseReading(UNREAD)
        if self._pausedCall is None and self.state not in ("closing", "lost"):
            self._pausedCall = self._clock.callLater(self.idleTimeout, self._notReading)

    def resumeProducing(self):
        call, self._pausedCall = self._pausedCall, None
        if call is not None and call.active():
            call.cancel()
        self._resumeReading(UNREAD)

    #: Why reading from the peer is paused: a bit mask of L{UNREAD} (the
    #: peer does not read our frames) and L{BACKLOG} (frames already read
    #: wait for their turn).
    _pausedFor = 0

    def _pauseReading(self, why):
        if not self._pausedFor:
            self.transport.pauseProducing()
        self._pausedFor |= why

    def _resumeReading(self, why):
        if self._pausedFor & why:
            self._pausedFor &= ~why
            if not self._pausedFor and self.state not in ("closing", "lost"):
                self.transport.resumeProducing()

    def stopProducing(self):
        pass

    def _notReading(self):
        self._pausedCall = None
        self.protocolViolation("peer read nothing of our answers for %gs" % (self.idleTimeout,))
