"""
Log observers for C{twistd --logger}.

C{twistd -n --logger tvlink.logs.json tvlink platform ...} writes one JSON
object per line on standard output, card numbers masked (by
L{tvlink.masking.MaskingObserver}, the project's one masking filter)::

    {"time": "2025-11-25T17:45:01.123+08:00", "level": "info",
     "namespace": "tvlink.link.protocol", "message": "link 127.0.0.1:7000 ready (platform)",
     "link_event": "ready", "peer": "127.0.0.1:7000", "role": "platform"}

C{time}, C{level}, C{namespace}, C{system} and C{message} (the event's
text) are always there; the event's own fields follow as they are (those
that are not JSON become their C{repr}); a failure adds C{failure} (its
traceback). Without C{--logger} twistd writes the usual human text.

L{tvlink.masking.jsonLogger} is the other JSON form: Twisted's own event
serialisation (record-separated JSON text sequences, RFC 7464), which
C{twisted.logger.eventsFromJSONLogFile} reads back.
"""

import json as _json
import sys
import time

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

from tvlink.masking import MaskingObserver

#: Field names the line itself uses.
RESERVED = ("time", "level", "namespace", "system", "message", "failure")


def _plain(value, depth=0):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth < 5 and isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if depth < 5 and isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


def _isoTime(seconds):
    if seconds is None:
        seconds = time.time()
    local = time.localtime(seconds)
    offset = time.strftime("%z", local)
    return "%s.%03d%s:%s" % (
        time.strftime("%Y-%m-%dT%H:%M:%S", local),
        int((seconds % 1) * 1000),
        offset[:3],
        offset[3:],
    )


def eventAsLine(event):
    """
    The JSON line (without the newline) for log C{event}.
    """
    level = event.get("log_level")
    line = {
        "time": _isoTime(event.get("log_time")),
        "level": getattr(level, "name", None) or "info",
        "namespace": event.get("log_namespace"),
        "system": event.get("log_system"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in RESERVED:
            continue
        line[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            line["failure"] = failure.getTraceback()
        except Exception:
            line["failure"] = repr(failure)
    return _json.dumps(line, ensure_ascii=False, separators=(",", ":"))


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event to C{out} as one line of JSON (see L{eventAsLine}).
    """

    def __init__(self, out):
        self.out = out

    def __call__(self, event):
        try:
            text = eventAsLine(event)
        except Exception as e:
            text = _json.dumps({"time": _isoTime(None), "level": "error", "message": "unloggable event: %r" % (e,)})
        self.out.write(text + "\n")
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()


def json():
    """
    A C{twistd --logger} factory: JSON lines on standard output, card
    numbers masked.
    """
    return MaskingObserver(JSONLinesObserver(sys.stdout))
