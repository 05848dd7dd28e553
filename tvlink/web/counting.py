"""
What the metrics count as it happens, kept cheap: histograms as plain
counts (L{Buckets}: a bisect and two additions an observation), a store's
commits folded into a histogram of their sizes (L{BatchSizes}), and the
payment-side handler wrapper that counts every request by type and the
response code it got (L{CountingHandler}). L{tvlink.web.metrics} reads
them at scrape time.
"""

from bisect import bisect_left

from prometheus_client.utils import floatToGoString
from zope.interface import implementer

from tvlink.link.interfaces import IMessageHandler

#: Round-trip buckets in seconds, up to the default platform timeout.
ROUND_TRIP_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
)

#: Pieces of work per SQLite commit.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

class Buckets:
    """
    A histogram kept as plain counts: L{observe} costs a bisect and two
    additions; L{cumulative} turns it into Prometheus buckets at scrape
    time.
    """

    def __init__(self, bounds=ROUND_TRIP_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self):
        return sum(self.counts)

    def cumulative(self):
        """
        C{[(le, count), ...]} ending with C{+Inf}, for
        L{HistogramMetricFamily.add_metric}.
        """
        out = []
        total = 0
        for bound, n in zip(self.bounds, self.counts):
            total += n
            out.append((floatToGoString(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class BatchSizes:
    """
    Follows a store's commits (C{commits}, C{applied} and the recent
    C{batchSizes} list of L{tvlink.store.sqlite.SQLiteStore}) into a histogram of
    pieces per commit, folding in the commits made since the last scrape.
    The count and sum are exact; a commit that left the store's bounded
    list before a scrape saw it is counted at the mean size of those
    missed.
    """

    def __init__(self):
        self.buckets = Buckets(BATCH_BUCKETS)
        self.seenCommits = 0
        self.seenApplied = 0
        self.store = None

    def update(self, store):
        if store is not self.store:
            # A new store (the service restarted): its figures start at 0.
            self.store = store
            self.seenCommits = self.seenApplied = 0
        commits = getattr(store, "commits", 0)
        # SQLiteStore says applied; the ledger says requests.
        applied = getattr(store, "applied", None)
        if applied is None:
            applied = getattr(store, "requests", 0)
        sizes = list(getattr(store, "batchSizes", ()) or ())
        new = commits - self.seenCommits
        if new <= 0:
            return
        visible = sizes[-new:] if new <= len(sizes) else sizes
        bounds, counts = self.buckets.bounds, self.buckets.counts
        for size in visible:
            counts[bisect_left(bounds, size)] += 1
        missed = new - len(visible)
        if missed > 0:
            mean = max(1.0, (applied - self.seenApplied - sum(visible)) / missed)
            counts[bisect_left(bounds, mean)] += missed
        # The sum is exact: what the store says it applied.
        self.buckets.sum += applied - self.seenApplied
        self.seenCommits = commits
        self.seenApplied = applied


def requestType(message):
    """
    A short name for the kind of request C{message} is.
    """
    mti = message.get("mti")
    if mti == "0200":
        return {"000000": "purchase", "300000": "balance", "330000": "status"}.get(
            message.get("proc"), "financial"
        )
    return {
        "0220": "refund",
        "0420": "reversal",
        "0800": "network",
        "0820": "notification",
    }.get(mti, "other")


@implementer(IMessageHandler)
class CountingHandler:
    """
    Wraps a payment-side L{IMessageHandler}: counts every request by type
    and the response code it got, and bins how long the handler took. Every
    other attribute (C{ledger}, C{counters}, ...) is the wrapped handler's.
    """

    def __init__(self, handler, clock):
        self.handler = handler
        self.clock = clock
        self.results = {}
        self.seconds = {}

    def __getattr__(self, name):
        return getattr(self.__dict__["handler"], name)

    def handle(self, message):
        started = self.clock.seconds()
        kind = requestType(message)
        try:
            answer = self.handler.handle(message)
        except BaseException:
            self._count(kind, "96", started)
            raise
        if hasattr(answer, "addCallbacks"):
            return answer.addCallbacks(
                self._answered, self._failed, callbackArgs=(kind, started), errbackArgs=(kind, started)
            )
        return self._answered(answer, kind, started)

    def _answered(self, answer, kind, started):
        resp = answer.get("resp") if isinstance(answer, dict) else None
        self._count(kind, resp if isinstance(resp, str) else "96", started)
        return answer

    def _failed(self, failure, kind, started):
        self._count(kind, "96", started)
        return failure

    def _count(self, kind, resp, started):
        key = (kind, resp)
        self.results[key] = self.results.get(key, 0) + 1
        buckets = self.seconds.get(kind)
        if buckets is None:
            buckets = self.seconds[kind] = Buckets()
        buckets.observe(self.clock.seconds() - started)
