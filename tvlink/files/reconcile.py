"""
The daily reconciliation file (对账文件): the payment side's record of one
sender institution's transactions of one day, in fixed-width lines, and
the platform's comparison of it with its journal.

The day of a transaction is read from its key: the transmission time
C{MMDDhhmmss} the platform stamped it with, the same on both sides. Day
C{D} with cut-over C{hh:mm:ss} holds the times from C{D-1 hh:mm:ss}
(inclusive) to C{D hh:mm:ss} (exclusive); with the default cut-over
C{00:00:00}, the times of C{D} itself. The year is the file's. Both
sides compute the same window (L{dayWindows}) from the file's header, so
no clock is read to decide what belongs to a day.

The layout, field by field, is in docs/operations.rst ("The
reconciliation file"); L{DETAIL}, L{HEADER} and L{TRAILER} hold it.
"""

import datetime
import os
import tempfile
import time

from tvlink.files.names import renameIntoPlace
from tvlink.masking import maskCard

#: Line types.
HEADER_TYPE, DETAIL_TYPE, TRAILER_TYPE = "H", "D", "T"

#: States of a detail line: approved and standing, refunded (wholly or
#: partly), reversed.
STATE_CODES = {"approved": "A", "refunded": "F", "reversed": "R"}

#: The width of a sender institution id in the records.
SENDER_WIDTH = 11

#: Each record: C{(field, width, kind)}, kind C{"n"} (digits, zero padded)
#: or C{"a"} (text, left-justified, space padded). The type letter is
#: the first byte of every line.
HEADER = (
    ("type", 1, "a"),
    ("date", 8, "n"),
    ("sender", SENDER_WIDTH, "a"),
    ("cutover", 6, "n"),
    ("writer", SENDER_WIDTH, "a"),
    ("created", 14, "n"),
)
DETAIL = (
    ("type", 1, "a"),
    ("sender", SENDER_WIDTH, "a"),
    ("stan", 6, "n"),
    ("time", 10, "n"),
    ("mti", 4, "n"),
    ("proc", 6, "n"),
    ("card", 19, "a"),
    ("amount", 12, "n"),
    ("resp", 2, "a"),
    ("state", 1, "a"),
    ("refunded", 12, "n"),
)
TRAILER = (
    ("type", 1, "a"),
    ("count", 8, "n"),
    ("purchases", 8, "n"),
    ("purchaseAmount", 16, "n"),
    ("refunds", 8, "n"),
    ("refundAmount", 16, "n"),
    ("reversals", 8, "n"),
    ("reversedAmount", 16, "n"),
    ("netSign", 1, "a"),
    ("net", 16, "n"),
)
LAYOUTS = {HEADER_TYPE: HEADER, DETAIL_TYPE: DETAIL, TRAILER_TYPE: TRAILER}

PURCHASE = ("0200", "000000")
REFUND = ("0220", "200000")


class BadReconciliationFile(ValueError):
    """
    A reconciliation file that does not follow the layout; the message
    names the line.
    """


def fileName(date):
    """
    The name the file of day C{date} (C{YYYYMMDD}) has in a sender's
    directory.
    """
    return "RC%s.txt" % (date,)


def createdText(seconds):
    """
    The header's C{created}: C{YYYYMMDDhhmmss}, UTC.
    """
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(seconds))


def parseDate(text):
    """
    C{YYYYMMDD} as a L{datetime.date}.

    @raise ValueError: otherwise.
    """
    if not (isinstance(text, str) and len(text) == 8 and text.isdigit()):
        raise ValueError("date must be YYYYMMDD, not %r" % (text,))
    return datetime.datetime.strptime(text, "%Y%m%d").date()


def parseCutover(text):
    """
    A cut-over C{HH:MM}, C{HH:MM:SS} or C{HHMMSS} as C{HHMMSS}.

    @raise ValueError: otherwise.
    """
    digits = text.replace(":", "") if isinstance(text, str) else ""
    if len(digits) == 4:
        digits += "00"
    if not (len(digits) == 6 and digits.isdigit()):
        raise ValueError("cut-over must be HH:MM or HH:MM:SS, not %r" % (text,))
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4]), int(digits[4:])
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError("cut-over %r is not a time of day" % (text,))
    return digits


def dayWindows(date, cutover="000000"):
    """
    The transmission times C{MMDDhhmmss} of day C{date} as half-open
    ranges C{[(start, end)]}: one, or two when the day crosses the new
    year (the times carry no year).
    """
    day = parseDate(date) if isinstance(date, str) else date
    cutover = parseCutover(cutover)
    begins = day - datetime.timedelta(days=1) if cutover != "000000" else day
    ends = day if cutover != "000000" else day + datetime.timedelta(days=1)
    start = begins.strftime("%m%d") + cutover
    end = ends.strftime("%m%d") + cutover
    if start < end:
        return [(start, end)]
    return [(start, "9999999999"), ("0000000000", end)]


#: How far a ledger entry's applied time (UTC) may be from its day: the
#: platform's clock, the time zone of the day and the payment side's clock
#: put together, with room to spare.
APPLIED_SLACK = datetime.timedelta(days=2)


def _around(date):
    day = parseDate(date) if isinstance(date, str) else date
    utc = datetime.timezone.utc
    begins = datetime.datetime.combine(day - APPLIED_SLACK, datetime.time(), utc)
    ends = datetime.datetime.combine(day + datetime.timedelta(days=1) + APPLIED_SLACK, datetime.time(), utc)
    return begins, ends


def appliedRange(date):
    """
    The applied times (ISO 8601 UTC texts C{(from, to)}) that a ledger
    entry of day C{date} must fall between. Transmission times carry no
    year, so without this a ledger of more than a year would put last
    year's same date into the day.
    """
    return tuple(t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in _around(date))


def createdRange(date):
    """
    The same for a platform journal's entries: the POSIX times
    C{(from, to)} their C{created} must fall between.
    """
    return tuple(t.timestamp() for t in _around(date))


def _field(value, width, kind, name):
    text = "" if value is None else str(value)
    if kind == "n":
        if not text.isdigit():
            raise ValueError("%s must be digits, not %r" % (name, value))
        text = text.zfill(width)
    else:
        text = text.ljust(width)
    if len(text) != width or not text.isascii():
        raise ValueError("%s %r does not fit %d ASCII characters" % (name, value, width))
    return text


def formatRecord(layout, values):
    """
    One line (without its line feed) of C{layout} from the C{dict}
    C{values}.
    """
    return "".join(_field(values.get(name), width, kind, name) for name, width, kind in layout)


def parseRecord(line, number):
    """
    The C{dict} of one line; the numbers as C{int}, the text stripped.

    @raise BadReconciliationFile: naming line C{number}.
    """
    layout = LAYOUTS.get(line[:1])
    if layout is None:
        raise BadReconciliationFile("line %d: unknown record type %r" % (number, line[:1]))
    width = sum(w for _, w, _ in layout)
    if len(line) != width:
        raise BadReconciliationFile("line %d: %d characters, a %s record has %d" % (number, len(line), line[:1], width))
    values, at = {}, 0
    for name, w, kind in layout:
        text = line[at : at + w]
        at += w
        if kind == "n":
            if not text.isdigit():
                raise BadReconciliationFile("line %d: %s %r is not digits" % (number, name, text))
            values[name] = int(text) if name not in ("stan", "time", "mti", "proc", "date", "cutover") else text
        else:
            values[name] = text.rstrip()
    return values


def detailLine(row):
    """
    The detail record of one ledger row (as
    L{tvlink.store.ledgersql.LedgerStore.transactionsBetween} gives it).
    """
    return formatRecord(
        DETAIL,
        {
            "type": DETAIL_TYPE,
            "sender": row["sender"],
            "stan": row["stan"],
            "time": row["time"],
            "mti": row["mti"],
            "proc": row["proc"],
            "card": maskCard(row["pan"]),
            "amount": row["amount"],
            "resp": row["resp"],
            "state": STATE_CODES.get(row["state"], "?"),
            "refunded": row["refunded"] or 0,
        },
    )


def totals(details):
    """
    The trailer's counts and sums over detail C{dict}s.
    """
    t = dict.fromkeys(("count", "purchases", "purchaseAmount", "refunds", "refundAmount", "reversals",
                       "reversedAmount"), 0)
    net = 0
    for d in details:
        t["count"] += 1
        kind = (d["mti"], d["proc"])
        standing = d["state"] != STATE_CODES["reversed"]
        if kind == PURCHASE:
            t["purchases"] += 1
            t["purchaseAmount"] += d["amount"]
            net += d["amount"] if standing else 0
        elif kind == REFUND:
            t["refunds"] += 1
            t["refundAmount"] += d["amount"]
            net -= d["amount"] if standing else 0
        if not standing:
            t["reversals"] += 1
            t["reversedAmount"] += d["amount"]
    t["netSign"] = "-" if net < 0 else "+"
    t["net"] = abs(net)
    return t


def renderFile(date, sender, rows, writer, created, cutover="000000"):
    """
    The whole file, as text: header, a detail line per row, trailer.

    @param created: when it is written, C{YYYYMMDDhhmmss}.
    """
    lines = [
        formatRecord(
            HEADER,
            {"type": HEADER_TYPE, "date": date, "sender": sender, "cutover": parseCutover(cutover),
             "writer": writer, "created": created},
        )
    ]
    details = []
    for row in rows:
        line = detailLine(row)
        lines.append(line)
        details.append(parseRecord(line, len(lines)))
    lines.append(formatRecord(TRAILER, dict(totals(details), type=TRAILER_TYPE)))
    return "".join(line + "\n" for line in lines)


def writeAtomically(path, text):
    """
    Write C{text} to C{path} by way of a temporary file in the same
    folder, renamed into place once it is on disk (and the new entry
    synced).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o640)
        renameIntoPlace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def readFile(text):
    """
    Parse a reconciliation file.

    @return: C{(header, details, trailer)}: C{dict}s as L{parseRecord}
        gives them.
    @raise BadReconciliationFile: if a line or the trailer is wrong.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        raise BadReconciliationFile("a reconciliation file has a header and a trailer at least")
    records = [parseRecord(line, n) for n, line in enumerate(lines, 1)]
    header, trailer, details = records[0], records[-1], records[1:-1]
    if header["type"] != HEADER_TYPE or trailer["type"] != TRAILER_TYPE:
        raise BadReconciliationFile("the first line must be the header and the last the trailer")
    for n, d in enumerate(details, 2):
        if d["type"] != DETAIL_TYPE:
            raise BadReconciliationFile("line %d: a %s record among the details" % (n, d["type"]))
    try:
        parseDate(header["date"])
    except ValueError as e:
        raise BadReconciliationFile("header: %s" % (e,)) from None
    expected = dict(totals(details), type=TRAILER_TYPE)
    for name, _, _ in TRAILER:
        if trailer[name] != expected[name]:
            raise BadReconciliationFile(
                "trailer %s is %s but the details make %s" % (name, trailer[name], expected[name])
            )
    return header, details, trailer
