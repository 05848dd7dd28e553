"""
The status page: what the links are doing, for a person (C{/}, HTML that
refreshes itself) and for a program (C{/status.json}, the same data).
"""

import html
import time

from twisted.internet.defer import maybeDeferred, succeed
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from tvlink.web.responses import JSONResource, gone, watch, writeJSON

#: Seconds between refreshes of the HTML page (C{?refresh=N} changes it,
#: C{?refresh=0} turns it off).
REFRESH = 5

#: How each state looks: C{good}, C{warn} or C{bad}.
STATE_CLASS = {
    "ready": "good",
    "up": "warn",
    "connecting": "bad",
    "degraded": "warn",
    "recovering": "warn",
    "ejected": "bad",
    "closing": "warn",
    "lost": "bad",
    "draining": "warn",
    "drained": "warn",
}


def _round(value, places=3):
    return None if value is None else round(value, places)


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


def _clockTime(seconds):
    """
    The local time of C{seconds} (the service's clock), for a person.
    """
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(seconds))


def platformSnapshot(service, started=None, journalCounts=None, api=None):
    """
    The status of a platform service as plain data.
    """
    now = service.reactor.seconds()
    links = []
    for entry in service.status():
        links.append(
            {
                "endpoint": entry["endpoint"],
                "slot": entry["slot"],
                "group": entry["group"],
                "state": entry["state"],
                "peer": entry["peer"],
                "inFlight": entry["inFlight"],
                "sinceFrameIn": _round(entry["sinceFrameIn"]),
                "sinceFrameOut": _round(entry["sinceFrameOut"]),
                "rttP50ms": _ms(entry["rttP50"]),
                "rttP99ms": _ms(entry["rttP99"]),
                "requests": entry.get("requestsOut", 0),
                "answered": entry.get("answered", 0),
                "timeouts": entry.get("timedOut", 0),
                "late": entry.get("late", 0),
                "reconnects": entry["reconnects"],
                "ejections": entry["ejections"],
                "violations": entry["violations"],
                "heartbeatsIn": entry.get("heartbeatsIn", 0),
                "heartbeatsOut": entry.get("heartbeatsOut", 0),
            }
        )
    ready = sum(1 for link in links if link["state"] == "ready")
    data = {
        "role": "platform",
        "sender": service.settings.sender,
        "running": bool(service.running),
        "stopping": bool(service.stopping),
        "uptime": _round(now - started) if started is not None else None,
        "time": _clockTime(now),
        "links": links,
        "ready": ready,
        "total": len(links),
        "queued": len(service.queue),
        "reversalsOutstanding": service.reversals.outstanding() if service.reversals is not None else 0,
        "timeout": service.settings.timeout,
        "terminalDeadline": service.terminal_deadline,
    }
    if journalCounts is not None:
        data["journal"] = dict(journalCounts)
    if api is not None:
        data["terminalCalls"] = {"%s %s" % key: count for key, count in sorted(api.results.items())}
        data["terminalCallsInProgress"] = api.active
    return data


def paymentSnapshot(service, started=None):
    """
    The status of a payment service as plain data: its listening address
    and the platforms connected to it.
    """
    now = service.reactor.seconds()
    factory = service.factory
    links = []
    for link in sorted(factory.links, key=lambda l: l.connectedAt):
        counters = link.counters
        rtts = link.roundTrips
        links.append(
            {
                "platform": getattr(link, "platform", None),
                "peer": link.peer,
                "state": link.state,
                "connectedFor": _round(now - link.connectedAt),
                "inFlight": link.inFlight(),
                "sinceFrameIn": _round(now - link.lastFrameIn),
                "sinceFrameOut": _round(now - link.lastFrameOut),
                "rttP50ms": _ms(rtts.percentile(50)),
                "rttP99ms": _ms(rtts.percentile(99)),
                "requestsIn": counters.get("requestsIn", 0),
                "requests": counters.get("requestsOut", 0),
                "timeouts": counters.get("timedOut", 0),
                "formatErrors": counters.get("formatErrors", 0),
                "heartbeatsIn": counters.get("heartbeatsIn", 0),
                "heartbeatsOut": counters.get("heartbeatsOut", 0),
                "violation": link.violation,
            }
        )
    ready = sum(1 for link in links if link["state"] == "ready")
    return {
        "role": "payment",
        "sender": service.settings.sender,
        "running": bool(service.running),
        "listening": service.address(),
        "uptime": _round(now - started) if started is not None else None,
        "time": _clockTime(now),
        "links": links,
        "ready": ready,
        "total": len(links),
        "linksAccepted": factory.counters["links"],
        "violations": factory.counters["violations"],
        "formatErrors": factory.counters["formatErrors"],
        "timeouts": factory.counters["timedOut"],
    }


class StatusSource:
    """
    Takes snapshots of one service, reading its journal counts when it has
    a journal.

    @param service: the service, or a callable returning it.
    """

    def __init__(self, service, api=None, title=None, links=()):
        self._service = service if callable(service) else (lambda: service)
        self.api = api
        self.title = title
        self.links = list(links)
        current = self._service()
        self.started = current.reactor.seconds() if current is not None else None

    def snapshot(self):
        """
        A L{Deferred} of the snapshot C{dict}, or of C{None} while there is
        no service yet.
        """
        service = self._service()
        if service is None:
            return succeed(None)
        if self.started is None:
            self.started = service.reactor.seconds()
        if service.role != "platform":
            return succeed(paymentSnapshot(service, self.started))
        journal = service.journal
        if journal is None:
            return succeed(platformSnapshot(service, self.started, None, self.api))
        d = journal.counts()
        d.addErrback(lambda f: None)
        d.addCallback(lambda counts: platformSnapshot(self._service() or service, self.started, counts, self.api))
        return d


class _SnapshotResource(JSONResource):
    """
    A leaf that renders the status C{source}'s snapshot (other methods
    than C{GET} are refused in JSON).
    """

    isLeaf = True
    exact = True
    log = Logger(namespace="tvlink.web")

    def __init__(self, source):
        JSONResource.__init__(self)
        self.source = source


class StatusJSON(_SnapshotResource):
    """
    C{/status.json}.
    """

    def render_GET(self, request):
        watch(request)
        d = maybeDeferred(self.source.snapshot)

        def write(data):
            if data is None:
                writeJSON(request, 503, {"error": "unavailable", "message": "starting"})
            else:
                writeJSON(request, 200, data)

        d.addCallback(write)
        d.addErrback(lambda f: self.log.failure("status snapshot failed", f))
        return NOT_DONE_YET


class StatusPage(_SnapshotResource):
    """
    C{/}: the status as an HTML page that refreshes itself.
    """

    def render_GET(self, request):
        watch(request)
        refresh = REFRESH
        values = request.args.get(b"refresh")
        if values and values[0].isdigit():
            refresh = min(3600, int(values[0]))
        d = maybeDeferred(self.source.snapshot)
        d.addCallback(lambda data: renderPage(data, refresh, self.source))
        d.addCallback(self._write, request)
        d.addErrback(lambda f: self.log.failure("status page failed", f))
        return NOT_DONE_YET

    def _write(self, page, request):
        if gone(request):
            return
        data = page.encode("utf-8")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % (len(data),))
        request.setHeader(b"cache-control", b"no-store")
        request.write(data)
        request.finish()


# -- HTML ------------------------------------------------------------------

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; background: #fafbfc; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.banner { display: inline-block; padding: .35em .8em; border-radius: 4px; font-weight: 600; }
.good { background: #d9f2df; color: #14532d; }
.warn { background: #fdf0c8; color: #713f12; }
.bad { background: #fbd5d5; color: #7f1d1d; }
.summary { color: #475569; margin: .5em 0; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #d7dde4; padding: .3em .6em; text-align: right; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; }
td.text, th.text { text-align: left; }
td.state { font-weight: 600; text-align: center; }
.none { color: #64748b; font-style: italic; }
footer { margin-top: 1.5em; color: #64748b; font-size: .9em; }
"""


def _e(value):
    return html.escape("" if value is None else str(value), quote=True)


def _ago(seconds):
    if seconds is None:
        return "\u2013"
    if seconds < 1:
        return "%d ms ago" % (seconds * 1000,)
    if seconds < 120:
        return "%.1f s ago" % (seconds,)
    if seconds < 7200:
        return "%d min ago" % (seconds // 60,)
    return "%.1f h ago" % (seconds / 3600.0,)


def _duration(seconds):
    if seconds is None:
        return "\u2013"
    seconds = int(seconds)
    if seconds < 60:
        return "%ds" % (seconds,)
    if seconds < 3600:
        return "%dm %02ds" % (seconds // 60, seconds % 60)
    return "%dh %02dm" % (seconds // 3600, (seconds % 3600) // 60)


def _msText(ms):
    return "\u2013" if ms is None else ("%.1f ms" % (ms,) if ms < 100 else "%d ms" % (ms,))


def _cell(value, cls="", title=None):
    attrs = ' class="%s"' % (cls,) if cls else ""
    if title:
        attrs += ' title="%s"' % (_e(title),)
    return "<td%s>%s</td>" % (attrs, _e(value))


def _banner(data, what):
    ready, total = data["ready"], data["total"]
    if data.get("stopping"):
        cls, text = "warn", "stopping: %d of %d %s ready" % (ready, total, what)
    elif total and ready == total:
        cls, text = "good", "all %d %s ready" % (total, what) if total > 1 else "%s ready" % (what[:-1],)
    elif ready:
        cls, text = "warn", "%d of %d %s ready" % (ready, total, what)
    else:
        cls = "bad" if data["role"] == "platform" else "warn"
        text = "no %s ready" % (what,) if total else "no %s connected" % (what,)
    return '<p id="banner" class="banner %s">%s</p>' % (cls, _e(text))


def _platformBody(data):
    parts = [_banner(data, "links")]
    summary = [
        "up %s" % (_duration(data["uptime"]),),
        "queued %d" % (data["queued"],),
        "reversals outstanding %d" % (data["reversalsOutstanding"],),
        "timeout %gs, terminal deadline %gs" % (data["timeout"], data["terminalDeadline"]),
    ]
    journal = data.get("journal")
    if journal is not None:
        summary.append(
            "journal: "
            + ", ".join("%s %d" % (state, journal.get(state, 0)) for state in ("approved", "declined", "in-doubt", "reversed", "pending"))
        )
    parts.append('<p class="summary">%s</p>' % (_e(" \u00b7 ".join(summary)),))
    parts.append("<h2>Links to payment endpoints</h2>")
    head = (
        "Endpoint", "Link", "State", "Last frame in", "Last frame out", "In flight", "RTT p50", "RTT p99",
        "Requests", "Timeouts", "Reconnects", "Violations",
    )
    parts.append('<table id="links"><thead><tr>%s</tr></thead><tbody>' % "".join(
        '<th class="text">%s</th>' % (h,) if i < 3 else "<th>%s</th>" % (h,) for i, h in enumerate(head)
    ))
    for link in data["links"]:
        state = link["state"]
        parts.append(
            '<tr class="link" data-endpoint="%s" data-state="%s">' % (_e(link["endpoint"]), _e(state))
            + _cell(link["endpoint"], "text endpoint")
            + _cell("#%d (group %d)" % (link["slot"], link["group"]), "text")
            + _cell(state, "state %s" % (STATE_CLASS.get(state, "warn"),))
            + _cell(_ago(link["sinceFrameIn"]))
            + _cell(_ago(link["sinceFrameOut"]))
            + _cell(link["inFlight"])
            + _cell(_msText(link["rttP50ms"]))
            + _cell(_msText(link["rttP99ms"]))
            + _cell(link["requests"])
            + _cell(link["timeouts"], "bad" if link["timeouts"] else "")
            + _cell(link["reconnects"])
            + _cell(link["violations"], "bad" if link["violations"] else "")
            + "</tr>"
        )
    parts.append("</tbody></table>")
    return parts


def _paymentBody(data):
    parts = [_banner(data, "platforms")]
    summary = [
        "listening on %s" % (data["listening"] or "\u2013",),
        "up %s" % (_duration(data["uptime"]),),
        "links accepted %d" % (data["linksAccepted"],),
        "violations %d" % (data["violations"],),
        "format errors %d" % (data["formatErrors"],),
        "timeouts %d" % (data["timeouts"],),
    ]
    parts.append('<p class="summary">%s</p>' % (_e(" \u00b7 ".join(summary)),))
    parts.append("<h2>Connected platforms</h2>")
    if not data["links"]:
        parts.append('<p class="none" id="no-links">No platform is connected.</p>')
        return parts
    head = (
        "Platform", "Peer", "State", "Connected", "Last frame in", "Last frame out", "In flight",
        "Requests in", "RTT p50", "RTT p99", "Timeouts", "Heartbeats in/out",
    )
    parts.append('<table id="links"><thead><tr>%s</tr></thead><tbody>' % "".join(
        '<th class="text">%s</th>' % (h,) if i < 3 else "<th>%s</th>" % (h,) for i, h in enumerate(head)
    ))
    for link in data["links"]:
        state = link["state"]
        parts.append(
            '<tr class="link" data-peer="%s" data-state="%s">' % (_e(link["peer"]), _e(state))
            + _cell(link["platform"] or "(not signed on)", "text platform")
            + _cell(link["peer"], "text peer")
            + _cell(state, "state %s" % (STATE_CLASS.get(state, "warn"),), link["violation"])
            + _cell(_duration(link["connectedFor"]))
            + _cell(_ago(link["sinceFrameIn"]))
            + _cell(_ago(link["sinceFrameOut"]))
            + _cell(link["inFlight"])
            + _cell(link["requestsIn"])
            + _cell(_msText(link["rttP50ms"]))
            + _cell(_msText(link["rttP99ms"]))
            + _cell(link["timeouts"], "bad" if link["timeouts"] else "")
            + _cell("%d / %d" % (link["heartbeatsIn"], link["heartbeatsOut"]))
            + "</tr>"
        )
    parts.append("</tbody></table>")
    return parts


def renderPage(data, refresh, source):
    """
    The HTML page for snapshot C{data} (C{None}: still starting).
    """
    if data is None:
        title = source.title or "tvlink"
        body = ['<p class="banner warn" id="banner">starting\u2026</p>']
    else:
        title = source.title or "tvlink %s %s" % (data["role"], data["sender"])
        body = _platformBody(data) if data["role"] == "platform" else _paymentBody(data)
    meta = '<meta http-equiv="refresh" content="%d">' % (refresh,) if refresh else ""
    nav = ['<a href="status.json">status.json</a>', '<a href="metrics">metrics</a>']
    nav += ['<a href="%s">%s</a>' % (_e(href), _e(text)) for href, text in source.links]
    footer = "%s%s%s" % (
        _e(data["time"]) + " \u00b7 " if data else "",
        " \u00b7 ".join(nav),
        " \u00b7 refreshes every %d s" % (refresh,) if refresh else "",
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">%s"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>%s</title><style>%s</style></head><body>"
        "<h1>%s</h1>%s<footer>%s</footer></body></html>\n"
        % (meta, _e(title), STYLE, _e(title), "\n".join(body), footer)
    )
