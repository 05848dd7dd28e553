"""
Prometheus metrics for a tvlink service, through C{prometheus-client}.

Each service gets its own L{CollectorRegistry} (never the global default),
so several services can live in one process (the sandbox runs both
roles). Almost everything is read from the counters the links and the
pool already keep, at scrape time, by a custom collector: a request costs
nothing extra. Only distributions are binned as they happen, with a
bisect and two additions (L{tvlink.web.counting}): round trips (on the
platform), handler times (on the payment side).

The names, all prefixed C{tvlink_}:

    - C{info{role,sender}}, C{links{state}}, C{links_opened_total}
    - C{frames_total{direction}}, C{heartbeats_total{direction}}
    - C{requests_sent_total}, C{requests_received_total},
      C{answers_total}, C{timeouts_total}, C{late_answers_total},
      C{format_errors_total}, C{violations_total}
    - platform: C{in_flight}, C{reconnects_total}, C{ejections_total},
      C{round_trip_seconds} (histogram), all by C{endpoint}; C{queued},
      C{reversals_outstanding}, C{journal_entries{state}},
      C{requests_total{type,result}} (terminal API calls; C{result} is
      approved, declined, in-doubt, reversed, unavailable, busy, timeout, invalid,
      not-found, conflict or error)
    - payment: C{requests_total{type,result}} (C{result} is the response
      code sent), C{handler_seconds{type}} (histogram), C{ledger_*}
    - payment with a file service (L{filesFamilies}): C{files_transfers},
      C{files_connections}, C{files_bytes_total{direction}},
      C{files_events_total{event}}, C{files_refused_total{result}}
      (C{result} is the answer code sent, as for C{requests_total})
    - both: C{store_commits_total{store}}, C{store_commit_batch_size{store}}
      (histogram of pieces per SQLite commit: the platform's journal, the
      payment side's ledger when it keeps those figures)
    - the web side (L{HTTPCollector}): C{http_connections} (open now),
      C{http_connections_max} (the cap), C{http_refused_total{limit}}
      (connections closed at a cap, requests cut at a deadline or for
      their size: C{http-max-connections}, C{http-max-per-client},
      C{http-head-timeout}, C{http-body-timeout}, C{http-max-body})
"""

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from tvlink.link.factory import LINK_COUNTERS
from tvlink.web.counting import BatchSizes, Buckets, CountingHandler
from tvlink.web.responses import JSONResource, gone, watch

#: Every state a platform link slot reports
#: (L{tvlink.platform.factory.PlatformFactory.stateName}).
PLATFORM_STATES = (
    "connecting", "up", "ready", "degraded", "ejected", "recovering", "closing", "lost", "draining", "drained",
)

#: The states of a payment-side link.
PAYMENT_STATES = ("up", "ready", "closing")

def _counter(name, doc, labels=()):
    return CounterMetricFamily("tvlink_" + name, doc, labels=list(labels))


def _gauge(name, doc, labels=()):
    return GaugeMetricFamily("tvlink_" + name, doc, labels=list(labels))


def _histogram(name, doc, labels=()):
    return HistogramMetricFamily("tvlink_" + name, doc, labels=list(labels))


class _Collector:
    """
    What both roles' collectors share.
    """

    def __init__(self, service):
        self.service = service
        self.stores = {}

    def refresh(self):
        """
        Gather what can only be read asynchronously, before a scrape.
        """
        return None

    def _info(self):
        info = _gauge("info", "This node: its role and institution id", ("role", "sender"))
        info.add_metric([self.service.role, self.service.settings.sender], 1)
        return info

    def _linkCounters(self, rows):
        """
        Families for the per-link counters, C{rows} being
        C{(labelValues, counters)} pairs; label names in C{self.linkLabels}.
        """
        labels = self.linkLabels
        frames = _counter("frames", "Frames on the links, idle queries included", labels + ("direction",))
        heartbeats = _counter("heartbeats", "Idle-query (heartbeat) frames", labels + ("direction",))
        simple = [
            ("requestsOut", _counter("requests_sent", "Requests this node sent", labels)),
            ("requestsIn", _counter("requests_received", "Requests this node received", labels)),
            ("answered", _counter("answers", "Answers matched to a request sent", labels)),
            ("timedOut", _counter("timeouts", "Requests sent that got no answer in time", labels)),
            ("late", _counter("late_answers", "Answers that matched nothing pending", labels)),
            ("formatErrors", _counter("format_errors", "Bodies that were not a usable message", labels)),
        ]
        for values, counters in rows:
            values = list(values)
            frames.add_metric(values + ["in"], counters.get("framesIn", 0))
            frames.add_metric(values + ["out"], counters.get("framesOut", 0))
            heartbeats.add_metric(values + ["in"], counters.get("heartbeatsIn", 0))
            heartbeats.add_metric(values + ["out"], counters.get("heartbeatsOut", 0))
            for name, family in simple:
                family.add_metric(values, counters.get(name, 0))
        return [frames, heartbeats] + [family for _, family in simple]

    def _stores(self, stores):
        """
        Commit figures of C{stores} (C{{name: store}}).
        """
        commits = _counter("store_commits", "SQLite transactions committed", ("store",))
        sizes = _histogram("store_commit_batch_size", "Pieces of work per SQLite commit (group commit)", ("store",))
        up = _gauge("store_database_up", "1 while the store's database is reachable, 0 while it is lost", ("store",))
        reconnects = _counter("store_reconnects", "Connections to the store's database made again after a loss", ("store",))
        retried = _counter("store_retried_batches", "Batches run again after a deadlock with another process", ("store",))
        for name, store in stores.items():
            if store is None or not hasattr(store, "commits"):
                continue
            commits.add_metric([name], store.commits)
            if hasattr(store, "databaseUp"):
                up.add_metric([name], 1 if store.databaseUp else 0)
                reconnects.add_metric([name], store.reconnects)
                retried.add_metric([name], store.retriedBatches)
            if hasattr(store, "batchSizes"):
                tracker = self.stores.get(name)
                if tracker is None:
                    tracker = self.stores[name] = BatchSizes()
                tracker.update(store)
                sizes.add_metric([name], tracker.buckets.cumulative(), tracker.buckets.sum)
        return [commits, sizes, up, reconnects, retried]


class PlatformCollector(_Collector):
    """
    Metrics of a L{tvlink.platform.service.PlatformService} and, when given, of its
    terminal API (L{tvlink.web.terminal.TerminalAPI}).
    """

    linkLabels = ("endpoint",)

    def __init__(self, service, api=None):
        _Collector.__init__(self, service)
        self.api = api
        self.journalCounts = {}
        self.roundTrips = {}
        service.observeRoundTrips(self._roundTrip)

    def _roundTrip(self, rtt, factory):
        buckets = self.roundTrips.get(factory.endpoint)
        if buckets is None:
            buckets = self.roundTrips[factory.endpoint] = Buckets()
        buckets.observe(rtt)

    def refresh(self):
        journal = self.service.journal
        if journal is None:
            self.journalCounts = {}
            return None
        d = journal.counts()

        def got(counts):
            self.journalCounts = counts

        return d.addCallback(got)

    def collect(self):
        service = self.service
        yield self._info()
        states = dict.fromkeys(PLATFORM_STATES, 0)
        byEndpoint = {}
        for f in service.factories:
            state = f.stateName()
            states[state] = states.get(state, 0) + 1
            row = byEndpoint.setdefault(
                f.endpoint,
                {"counters": dict.fromkeys(LINK_COUNTERS, 0), "inFlight": 0, "reconnects": 0,
                 "ejections": 0, "violations": 0, "links": 0},
            )
            for name, value in f.slotCounters.items():
                row["counters"][name] = row["counters"].get(name, 0) + value
            row["inFlight"] += f.link.inFlight() if f.link is not None else 0
            row["reconnects"] += f.reconnects
            row["ejections"] += f.breaker.ejections
            row["violations"] += f.counters["violations"]
            row["links"] += f.counters["links"]
        links = _gauge("links", "Link slots by state", ("state",))
        for state, count in states.items():
            links.add_metric([state], count)
        yield links
        for family in self._linkCounters([((e,), row["counters"]) for e, row in byEndpoint.items()]):
            yield family
        inFlight = _gauge("in_flight", "Requests sent and not yet answered", ("endpoint",))
        reconnects = _counter("reconnects", "Reconnection attempts", ("endpoint",))
        ejections = _counter("ejections", "Times a link was ejected for timing out", ("endpoint",))
        violations = _counter("violations", "Links closed for breaking the framing rules", ("endpoint",))
        opened = _counter("links_opened", "Connections made", ("endpoint",))
        for endpoint, row in byEndpoint.items():
            inFlight.add_metric([endpoint], row["inFlight"])
            reconnects.add_metric([endpoint], row["reconnects"])
            ejections.add_metric([endpoint], row["ejections"])
            violations.add_metric([endpoint], row["violations"])
            opened.add_metric([endpoint], row["links"])
        yield inFlight
        yield reconnects
        yield ejections
        yield violations
        yield opened
        rtt = _histogram("round_trip_seconds", "Request to answer, on the platform's clock", ("endpoint",))
        for endpoint in byEndpoint:
            buckets = self.roundTrips.get(endpoint) or Buckets()
            rtt.add_metric([endpoint], buckets.cumulative(), buckets.sum)
        yield rtt
        queued = _gauge("queued", "Requests waiting for a ready link")
        queued.add_metric([], len(service.queue))
        yield queued
        outstanding = _gauge("reversals_outstanding", "In-doubt transactions still being reversed")
        outstanding.add_metric([], service.reversals.outstanding() if service.reversals is not None else 0)
        yield outstanding
        entries = _gauge("journal_entries", "Journal entries by state", ("state",))
        for state in ("pending", "in-doubt", "approved", "declined", "reversed"):
            entries.add_metric([state], self.journalCounts.get(state, 0))
        yield entries
        if self.api is not None:
            requests = _counter("requests", "Terminal API calls by type and result", ("type", "result"))
            for (kind, result), count in sorted(self.api.results.items()):
                requests.add_metric([kind, result], count)
            yield requests
        journal = service.journal
        for family in self._stores({"journal": getattr(journal, "store", None)}):
            yield family


class PaymentCollector(_Collector):
    """
    Metrics of a L{tvlink.payment.service.PaymentService}. Installs a
    L{CountingHandler} around the service's handler, and keeps the
    counters of links that have closed so the totals never go down.
    """

    linkLabels = ("platform",)

    def __init__(self, service):
        _Collector.__init__(self, service)
        self.retired = {}
        factory = service.factory
        handler = factory.handler
        if not isinstance(handler, CountingHandler):
            handler = CountingHandler(handler, service.reactor)
            factory.handler = service.handler = handler
        self.handler = handler
        factory.observers.append(self._linkEvent)

    def _linkEvent(self, event, link, factory):
        if event == "lost":
            totals = self.retired.setdefault(_platformOf(link), dict.fromkeys(LINK_COUNTERS, 0))
            for name, value in link.counters.items():
                totals[name] = totals.get(name, 0) + value

    def ledger(self):
        service = self.service
        ledger = getattr(service, "ledger", None)
        if ledger is None:
            ledger = getattr(self.handler.handler, "ledger", None)
        return ledger

    def collect(self):
        service = self.service
        factory = service.factory
        yield self._info()
        states = dict.fromkeys(PAYMENT_STATES, 0)
        totals = {name: dict(counters) for name, counters in self.retired.items()}
        for link in list(factory.links):
            states[link.state] = states.get(link.state, 0) + 1
            row = totals.setdefault(_platformOf(link), dict.fromkeys(LINK_COUNTERS, 0))
            for name, value in link.counters.items():
                row[name] = row.get(name, 0) + value
        links = _gauge("links", "Platform links by state", ("state",))
        for state, count in states.items():
            links.add_metric([state], count)
        yield links
        for family in self._linkCounters([((name,), counters) for name, counters in sorted(totals.items())]):
            yield family
        opened = _counter("links_opened", "Platform connections accepted")
        opened.add_metric([], factory.counters["links"])
        yield opened
        violations = _counter("violations", "Links closed for breaking the framing rules")
        violations.add_metric([], factory.counters["violations"])
        yield violations
        inFlight = _gauge("in_flight", "Requests this node sent and not yet answered")
        inFlight.add_metric([], sum(link.inFlight() for link in factory.links))
        yield inFlight
        requests = _counter("requests", "Requests handled, by type and the response code sent", ("type", "result"))
        for (kind, resp), count in sorted(self.handler.results.items()):
            requests.add_metric([kind, resp], count)
        yield requests
        seconds = _histogram("handler_seconds", "Time from a request's arrival to its answer", ("type",))
        for kind, buckets in sorted(self.handler.seconds.items()):
            seconds.add_metric([kind], buckets.cumulative(), buckets.sum)
        yield seconds
        backend = getattr(self.handler.handler, "counters", None)
        if isinstance(backend, dict):
            family = _counter("backend_requests", "Requests given to the account back end, by outcome", ("outcome",))
            for name, value in sorted(backend.items()):
                family.add_metric([name], value)
            yield family
        ledger = self.ledger()
        for family in self._ledger(ledger):
            yield family
        for family in self._stores({"ledger": getattr(ledger, "store", ledger)}):
            yield family
        files = getattr(service, "files", None)
        if files is not None:
            for family in filesFamilies(files.factory):
                yield family

    def _ledger(self, ledger):
        stats = getattr(ledger, "stats", None)
        if not callable(stats):
            return []
        try:
            figures = stats()
        except Exception:
            return []
        out = []
        for key, name, kind, doc in (
            ("commits", "ledger_commits", _counter, "Ledger transactions committed"),
            ("requests", "ledger_requests", _counter, "Requests applied by the ledger"),
            ("failedCommits", "ledger_failed_commits", _counter, "Ledger commits that failed"),
            ("commitSeconds", "ledger_commit_seconds", _counter, "Time spent committing"),
            ("voids", "ledger_voids", _counter, "Work voided before it was applied"),
            ("largestBatch", "ledger_batch_largest", _gauge, "Most requests one ledger commit held"),
            ("meanBatch", "ledger_batch_mean", _gauge, "Requests per ledger commit, on average"),
            ("queued", "ledger_queued", _gauge, "Requests waiting for the ledger writer"),
        ):
            value = figures.get(key) if isinstance(figures, dict) else None
            if isinstance(value, (int, float)):
                family = kind(name, doc)
                family.add_metric([], value)
                out.append(family)
        return out


def filesFamilies(factory):
    """
    The figures of a file service (its L{tvlink.files.server.FileServerFactory}).
    """
    transfers = _gauge("files_transfers", "File transfers (downloads and uploads) in progress")
    transfers.add_metric([], factory.active)
    connections = _gauge("files_connections", "Connections to the file service open now")
    connections.add_metric([], factory.connections)
    data = _counter("files_bytes", "File data sent (downloads) and received (uploads)", ("direction",))
    for direction in ("sent", "received"):
        data.add_metric([direction], factory.bytes[direction])
    events = _counter("files_events", "File service log events, by files_event", ("event",))
    for event, count in sorted(factory.events.items()):
        events.add_metric([event], count)
    refused = _counter("files_refused", "File service requests refused, by the answer code sent", ("result",))
    for resp, count in sorted(factory.refusals.items()):
        refused.add_metric([resp], count)
    return [transfers, connections, data, events, refused]


class HTTPCollector:
    """
    The figures of a web side's front door (a
    L{tvlink.web.frontdoor.GuardedConnections}).
    """

    def __init__(self, connections):
        self.connections = connections

    def collect(self):
        connections = self.connections
        open_ = _gauge("http_connections", "HTTP connections open now")
        open_.add_metric([], connections.caps.open)
        cap = _gauge("http_connections_max", "HTTP connections allowed open at once")
        cap.add_metric([], connections.caps.total)
        refused = _counter("http_refused", "HTTP connections or requests refused at a limit", ("limit",))
        for limit, count in sorted(connections.limits.hits.items()):
            refused.add_metric([limit], count)
        return [open_, cap, refused]


def _platformOf(link):
    return getattr(link, "platform", None) or "unknown"


def registryFor(service, api=None):
    """
    A new L{CollectorRegistry} holding the metrics of C{service} (a
    platform or payment service) and, on a platform, of its terminal
    C{api}.

    @return: C{(registry, collector)}.
    """
    registry = CollectorRegistry(auto_describe=False)
    if service.role == "platform":
        collector = PlatformCollector(service, api)
    else:
        collector = PaymentCollector(service)
    registry.register(collector)
    return registry, collector


class MetricsResource(JSONResource):
    """
    C{/metrics}: the registry in the exposition format the scraper asks
    for (Prometheus text or OpenMetrics), generated on the reactor thread
    (prometheus-client's own Twisted resource runs in a thread pool, which
    would read the service's counters while the reactor changes them).
    """

    isLeaf = True
    exact = True
    log = Logger(namespace="tvlink.metrics")

    def __init__(self, registry, collector=None):
        JSONResource.__init__(self)
        self.registry = registry
        self.collector = collector

    def render_GET(self, request):
        watch(request)
        refresh = self.collector.refresh if self.collector is not None else (lambda: None)
        d = maybeDeferred(refresh)
        d.addErrback(lambda f: self.log.failure("refreshing metrics failed", f))
        d.addCallback(self._write, request)
        d.addErrback(lambda f: self.log.failure("writing metrics failed", f))
        return NOT_DONE_YET

    def _write(self, _, request):
        encoder, contentType = choose_encoder(request.getHeader("accept") or "")
        body = encoder(self.registry)
        if gone(request):
            return
        request.setHeader(b"content-type", contentType.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()
