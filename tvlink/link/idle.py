"""
L{IdleTimeout}: the two liveness timers of a link, and a close that
cannot hang.
"""


class IdleTimeout:
    """
    Mixin for a L{twisted.internet.protocol.Protocol} that keeps a link
    alive and notices when it is dead.

    Like L{twisted.protocols.policies.TimeoutMixin} it is small and holds
    one L{IDelayedCall}; unlike it, it tracks two deadlines measured from
    the last frame out (write-idle: send a heartbeat) and the last frame in
    (read-idle: the link is dead), plus an optional third, the frame
    timeout, while a frame is half received.

    The clock is C{self.factory.clock} (an L{IReactorTime}); nothing here
    touches the global reactor. Subclasses call L{startIdle} once the
    connection is made, L{noteRead}/L{noteWrite} as frames pass,
    L{notePartial} when a frame begins or completes, and L{stopIdle} in
    C{connectionLost}. They implement L{writeIdle}, L{readIdle} and
    L{frameTimedOut}.

    @ivar heartbeat: seconds of write silence before L{writeIdle}.
    @ivar idleTimeout: seconds of read silence before L{readIdle}.
    @ivar frameTimeout: seconds a frame may take to arrive whole.
    @ivar closeTimeout: seconds a close may take before the connection is
        aborted.
    """

    heartbeat = 60.0
    idleTimeout = 180.0
    frameTimeout = 30.0
    closeTimeout = 5.0

    _idleCall = None
    _abortCall = None
    _partialSince = None
    _lastRead = 0.0
    _lastWrite = 0.0

    @property
    def clock(self):
        return self.factory.clock

    def startIdle(self):
        now = self.clock.seconds()
        self._lastRead = self._lastWrite = now
        self._schedule(now)

    def stopIdle(self):
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        self._abortCall = None

    def noteRead(self, now):
        """
        A complete frame arrived at C{now}.
        """
        self._lastRead = now

    def noteWrite(self, now):
        """
        A frame was written at C{now}.
        """
        self._lastWrite = now

    def notePartial(self, partial, now, completed=False):
        """
        Whether a frame is now half received; C{completed} if frames were
        completed by the same bytes, so the half-received one began just
        now. Each frame has its own C{frameTimeout}; starting one may bring
        the next deadline forward.
        """
        if not partial:
            self._partialSince = None
        elif self._partialSince is None or completed:
            self._partialSince = now
            call = self._idleCall
            if call is not None and call.getTime() > now + self.frameTimeout:
                call.reset(self.frameTimeout)

    def _deadline(self):
        deadline = min(self._lastWrite + self.heartbeat, self._lastRead + self.idleTimeout)
        if self._partialSince is not None:
            deadline = min(deadline, self._partialSince + self.frameTimeout)
        return deadline

    def _schedule(self, now):
        self._idleCall = self.clock.callLater(max(0.0, self._deadline() - now), self._tick)

    def _tick(self):
        self._idleCall = None
        now = self.clock.seconds()
        if now >= self._lastRead + self.idleTimeout:
            self.readIdle(now - self._lastRead)
            return
        if self._partialSince is not None and now >= self._partialSince + self.frameTimeout:
            self.frameTimedOut(now - self._partialSince)
            return
        if now >= self._lastWrite + self.heartbeat:
            self.writeIdle()
            # writeIdle writes a frame, which records the write time.
            self._lastWrite = max(self._lastWrite, now)
        if self._idleCall is None and self._abortCall is None:
            self._schedule(now)

    def closeLink(self):
        """
        Close the connection; abort it if the close has not finished
        within C{closeTimeout} seconds.
        """
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        if self._abortCall is None:
            self._abortCall = self.clock.callLater(self.closeTimeout, self._abort)
            self.transport.loseConnection()

    def _abort(self):
        self._abortCall = None
        self.closeAborted()
        self.transport.abortConnection()

    def writeIdle(self):
        """
        Nothing was written for C{heartbeat} seconds.
        """

    def readIdle(self, silence):
        """
        Nothing was read for C{silence} (>= C{idleTimeout}) seconds.
        """

    def frameTimedOut(self, elapsed):
        """
        A frame has been arriving for C{elapsed} seconds.
        """

    def closeAborted(self):
        """
        A close did not finish in time; the connection is being aborted.
        """
