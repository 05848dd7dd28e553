"""
The limits a server enforces on its connections: L{ConnectionCaps}
counts them (in all, and per client address) and says which cap a new
one would break; L{LimitLog} logs each refusal (in-flight caps, handler
caps, connection caps), rate-limited so a flood of refusals does not
flood the log.
"""

from twisted.logger import Logger


class LimitLog:
    """
    Logs that a limit was hit without letting a flood flood the log: the
    first hit of each kind is logged at once, later ones as a count at
    most every C{interval} seconds.
    """

    log = Logger()
    interval = 10.0

    def __init__(self, clock, log=None, event="link_event"):
        self.clock = clock
        if log is not None:
            self.log = log
        #: The key under which the events carry the word C{limit}.
        self.event = event
        self.hits = {}
        self._last = {}
        self._unlogged = {}
        self._flushes = {}

    def hit(self, limit, peer, detail):
        """
        The limit named C{limit} refused something from C{peer}.
        """
        self.hits[limit] = self.hits.get(limit, 0) + 1
        now = self.clock.seconds()
        last = self._last.get(limit)
        if last is not None and now - last < self.interval:
            self._unlogged[limit] = self._unlogged.get(limit, 0) + 1
            if limit not in self._flushes:
                # Whatever comes after this is reported when the interval
                # is over, even if nothing else is refused.
                self._flushes[limit] = self.clock.callLater(
                    last + self.interval - now, self._flush, limit, peer, detail
                )
            return
        self._report(limit, peer, detail, now)

    def _report(self, limit, peer, detail, now):
        self._last[limit] = now
        call = self._flushes.pop(limit, None)
        if call is not None and call.active():
            call.cancel()
        more = self._unlogged.pop(limit, 0)
        self.log.warn(
            "limit {limit} hit: refused {detail} from {peer}{more}",
            **{self.event: "limit"},
            limit=limit,
            detail=detail,
            peer=peer,
            more=" (and %d more refusals since the last report)" % (more,) if more else "",
        )

    def _flush(self, limit, peer, detail):
        self._flushes.pop(limit, None)
        more = self._unlogged.pop(limit, 0)
        if more:
            self._last[limit] = self.clock.seconds()
            self.log.warn(
                "limit {limit} hit: refused {count} more (the last: {detail} from {peer}) in {interval:g}s",
                **{self.event: "limit"},
                limit=limit,
                count=more,
                detail=detail,
                peer=peer,
                interval=self.interval,
            )

    def stop(self):
        """
        Cancel the pending reports.
        """
        flushes, self._flushes = self._flushes, {}
        for call in flushes.values():
            if call.active():
                call.cancel()


class ConnectionCaps:
    """
    Counts a server's open connections, in all and per client host, and
    says which cap a new one would break.

    @param total: connections open at once, in all.
    @param perHost: connections open at once from one host.
    @param names: the names of the two caps, for refusals
        (C{(total, perHost)}).
    """

    def __init__(self, total, perHost, names=("max-connections", "max-connections-per-client")):
        self.total = total
        self.perHost = perHost
        self.names = names
        #: Connections open now.
        self.open = 0
        #: Connections open now, by host.
        self.byHost = {}

    def admit(self, host):
        """
        Count a new connection from C{host}, if the caps allow it.

        @return: C{None} when it is admitted (call L{release} when it
            ends), else the name of the cap it would break.
        """
        if self.open >= self.total:
            return self.names[0]
        count = self.byHost.get(host, 0)
        if count >= self.perHost:
            return self.names[1]
        self.byHost[host] = count + 1
        self.open += 1
        return None

    def release(self, host):
        """
        A connection from C{host} that L{admit} let in has ended.
        """
        self.open -= 1
        left = self.byHost.get(host, 1) - 1
        if left > 0:
            self.byHost[host] = left
        else:
            self.byHost.pop(host, None)
