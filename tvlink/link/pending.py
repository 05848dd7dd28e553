"""
The table of requests a link has sent and not yet had answered: one
Deferred per request, each with a canceller that removes its entry, and
one timer for the whole table's deadlines.
"""

from heapq import heapify, heappop, heappush

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tvlink.errors import DuplicateKey, RequestTimeout
from tvlink.link.settings import succeedWith

_NEVER = float("inf")


class PendingRequests:
    """
    The requests a link has sent and not yet had answered, by key.

    Each entry's Deferred has a canceller that removes the entry; an answer
    removes it too; its deadline fails it with L{RequestTimeout}. One timer
    serves the whole table (set for the earliest deadline, over a heap that
    is compacted as answers leave stale deadlines behind), so a request
    costs no timer of its own. No entry outlives its request.

    @ivar release: called with the STAN handed to L{add} when its request
        ends, however it ends.
    """

    def __init__(self, clock, onTimeout=None, release=None):
        self._clock = clock
        #: key -> (deferred, seq, sentAt, timeout, stan). The link's answer
        #: path takes entries out of it directly and calls L{settle} once
        #: per batch of frames.
        self.entries = {}
        self._heap = []
        self._seq = 0
        self._timer = None
        #: When the timer fires; infinity while there is none.
        self._timerAt = _NEVER
        self._onTimeout = onTimeout
        self._release = release
        self._emptyWaiters = []

    def __len__(self):
        return len(self.entries)

    def __contains__(self, key):
        return key in self.entries

    def add(self, key, timeout, now=None, stan=None):
        """
        Register a request sent at C{now}; return the L{Deferred} of its
        answer. C{stan}, if given, is released when the request ends.

        @raise DuplicateKey: if C{key} is already pending.
        """
        entries = self.entries
        if key in entries:
            raise DuplicateKey("request %s is already in flight" % ("/".join(map(str, key)),))
        if now is None:
            now = self._clock.seconds()
        d = Deferred(lambda d: self._cancel(key))
        seq = self._seq = self._seq + 1
        deadline = now + timeout
        entries[key] = (d, seq, now, timeout, stan)
        heap = self._heap
        heappush(heap, (deadline, seq, key))
        if deadline < self._timerAt:
            timer = self._timer
            if timer is None:
                timer = self._timer = self._clock.callLater(timeout, self._expireDue)
            else:
                timer.reset(timeout)
            self._timerAt = timer.getTime()
        elif not seq & 63 and len(heap) > 2 * len(entries) + 64:
            # Answered requests leave their deadlines behind in the heap.
            self._compact()
        return d

    def pop(self, key):
        """
        Take the entry of C{key} out of the table, for an answer.

        @return: C{(deferred, sentAt)}, or C{None} if nothing was pending
            under C{key}.
        """
        entry = self.entries.pop(key, None)
        if entry is None:
            return None
        if entry[4] is not None:
            self._release(entry[4])
        self.settle()
        return entry[0], entry[2]

    def settle(self):
        """
        Entries were taken out of L{entries} directly: if none is left,
        stop the timer and tell the L{whenEmpty} waiters.
        """
        if not self.entries and (self._timer is not None or self._emptyWaiters):
            self._emptied()

    def resolve(self, key, answer):
        """
        Fire the request C{key} with C{answer}.

        @return: the time it was sent, or C{None} if nothing was pending
            under C{key}.
        """
        entry = self.pop(key)
        if entry is None:
            return None
        entry[0].callback(answer)
        return entry[1]

    def discard(self, key):
        """
        Forget C{key} without firing or releasing anything (it was never
        sent).
        """
        if self.entries.pop(key, None) is not None and not self.entries:
            self._emptied()

    def _cancel(self, key):
        entry = self.entries.pop(key, None)
        if entry is not None:
            if entry[4] is not None:
                self._release(entry[4])
            if not self.entries:
                self._emptied()

    def _compact(self):
        entries = self.entries
        self._heap = [(e[2] + e[3], e[1], k) for k, e in entries.items()]
        heapify(self._heap)

    def _expireDue(self):
        self._timer = None
        self._timerAt = _NEVER
        now = self._clock.seconds()
        heap = self._heap
        entries = self.entries
        expired = []
        while heap and heap[0][0] <= now:
            deadline, seq, key = heappop(heap)
            entry = entries.get(key)
            if entry is not None and entry[1] == seq:
                del entries[key]
                if entry[4] is not None:
                    self._release(entry[4])
                expired.append((key, entry))
        while heap:
            deadline, seq, key = heap[0]
            entry = entries.get(key)
            if entry is not None and entry[1] == seq:
                self._timer = self._clock.callLater(deadline - now, self._expireDue)
                self._timerAt = self._timer.getTime()
                break
            heappop(heap)
        for key, entry in expired:
            if self._onTimeout is not None:
                self._onTimeout(key)
            entry[0].errback(RequestTimeout(key, entry[3]))
        if expired and not entries:
            self._emptied()

    def failAll(self, reason):
        """
        Fail every pending request with exception C{reason}.
        """
        entries, self.entries = self.entries, {}
        self._heap = []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timerAt = _NEVER
        for d, seq, sentAt, timeout, stan in entries.values():
            if stan is not None:
                self._release(stan)
        for d, seq, sentAt, timeout, stan in entries.values():
            d.errback(Failure(reason))
        self._emptied()

    def whenEmpty(self):
        """
        A L{Deferred} that fires once nothing is pending.
        """
        if not self.entries:
            return succeedWith(None)
        d = Deferred(lambda d: self._emptyWaiters.remove(d))
        self._emptyWaiters.append(d)
        return d

    def _emptied(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timerAt = _NEVER
        self._heap = []
        if self._emptyWaiters:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)
