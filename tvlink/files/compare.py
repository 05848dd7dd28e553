"""
The platform's check of a reconciliation file against its journal
(C{tvlink reconcile}): which transactions agree, which only one side
has, and which differ in amount, card or state.

A detail line agrees with the journal entry under the same key when the
amounts are the same, the masked cards are (where both have one), and
the states fit: a line C{A} (approved) or C{F} (refunded: the refund is
its own entry) with an entry C{approved}, a line C{R} with an entry
C{reversed}. A journal entry with no line agrees when the platform does
not hold it for money moved: C{declined} or C{reversed} (nothing stands
on either side), or C{pending} or C{in-doubt} (its reversal is under way,
and the payment side never applied it). An entry C{approved} with no line
is only on the platform; a line with no entry, only on the payment side,
and so is a second line of the same key (C{duplicate}): the journal holds
the transaction once.
"""

import csv
import io
import json

from tvlink.files.reconcile import STATE_CODES

MATCHED = "matched"
ONLY_PLATFORM = "only on platform"
ONLY_PAYMENT = "only on payment"
DIFFER = "differ"
KINDS = (MATCHED, ONLY_PLATFORM, ONLY_PAYMENT, DIFFER)

#: The journal state each line state agrees with.
AGREEING = {STATE_CODES["approved"]: "approved", STATE_CODES["refunded"]: "approved", STATE_CODES["reversed"]: "reversed"}

#: Journal states that hold money as moved.
STANDING = ("approved",)

TYPES = {("0200", "000000"): "purchase", ("0220", "200000"): "refund"}


def _journalAmount(entry):
    amount = entry.get("amount")
    return int(amount) if isinstance(amount, str) and amount.isdigit() else amount


def compare(details, entries):
    """
    Compare the detail records of a file with the journal entries of the
    same sender and day.

    @return: a C{dict}: C{rows} (one C{dict} per transaction either side
        holds, with C{kind} one of L{KINDS}, C{key}, C{type}, both
        amounts and states, and C{what} differs), C{counts} by kind, and
        C{agreeing}, the journal entries with no line that agree.
    """
    journal = {(e["sender"], e["stan"], e["time"]): e for e in entries}
    rows = []
    seen = set()
    for d in details:
        key = (d["sender"], d["stan"], d["time"])
        duplicate = key in seen
        seen.add(key)
        entry = None if duplicate else journal.get(key)
        row = {
            "key": "/".join(key),
            "type": TYPES.get((d["mti"], d["proc"]), d["mti"] + "/" + d["proc"]),
            "paymentAmount": d["amount"],
            "paymentState": d["state"],
            "platformAmount": None,
            "platformState": None,
            "what": ["duplicate"] if duplicate else [],
        }
        if entry is None:
            row["kind"] = ONLY_PAYMENT
        else:
            row["platformAmount"] = _journalAmount(entry)
            row["platformState"] = entry["state"]
            if row["platformAmount"] != d["amount"]:
                row["what"].append("amount")
            if entry.get("pan") and d["card"] and entry["pan"] != d["card"]:
                row["what"].append("card")
            if AGREEING.get(d["state"]) != entry["state"]:
                row["what"].append("state")
            row["kind"] = DIFFER if row["what"] else MATCHED
        rows.append(row)
    agreeing = 0
    for key, entry in sorted(journal.items()):
        if key in seen:
            continue
        if entry["state"] not in STANDING:
            agreeing += 1
            continue
        rows.append(
            {
                "key": "/".join(key),
                "type": TYPES.get((entry["mti"], entry["proc"]), entry["mti"]),
                "paymentAmount": None,
                "paymentState": None,
                "platformAmount": _journalAmount(entry),
                "platformState": entry["state"],
                "what": [],
                "kind": ONLY_PLATFORM,
            }
        )
    counts = {kind: sum(1 for r in rows if r["kind"] == kind) for kind in KINDS}
    return {"rows": rows, "counts": counts, "agreeing": agreeing}


def disagrees(report):
    """
    Whether anything in C{report} disagrees.
    """
    return any(report["counts"][kind] for kind in (ONLY_PLATFORM, ONLY_PAYMENT, DIFFER))


def _cell(value):
    return "-" if value is None else str(value)


def table(report, header):
    """
    The report as a table a person reads: disagreements first, then the
    matched, then the counts.
    """
    out = io.StringIO()
    out.write("reconciliation of %s for sender %s (cut-over %s)\n" % (header["date"], header["sender"], header["cutover"]))
    line = "%-17s %-32s %-9s %14s %14s %-10s %-10s %s\n"
    out.write(line % ("result", "key", "type", "payment fen", "platform fen", "payment", "platform", "differs in"))
    order = {kind: n for n, kind in enumerate((DIFFER, ONLY_PLATFORM, ONLY_PAYMENT, MATCHED))}
    for row in sorted(report["rows"], key=lambda r: (order[r["kind"]], r["key"])):
        out.write(
            line
            % (
                row["kind"],
                row["key"],
                row["type"],
                _cell(row["paymentAmount"]),
                _cell(row["platformAmount"]),
                _cell(row["paymentState"]),
                _cell(row["platformState"]),
                ",".join(row["what"]) or "-",
            )
        )
    counts = report["counts"]
    out.write(
        "%d matched, %d only on platform, %d only on payment, %d differ; %d journal entries not applied on"
        " either side\n"
        % (counts[MATCHED], counts[ONLY_PLATFORM], counts[ONLY_PAYMENT], counts[DIFFER], report["agreeing"])
    )
    return out.getvalue()


CSV_FIELDS = ("kind", "key", "type", "paymentAmount", "platformAmount", "paymentState", "platformState", "what")


def asCSV(report):
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in report["rows"]:
        writer.writerow(dict(row, what=";".join(row["what"])))
    return out.getvalue()


def asJSON(report, header):
    return json.dumps(
        {"date": header["date"], "sender": header["sender"], "cutover": header["cutover"], **report},
        indent=2,
        sort_keys=True,
    ) + "\n"
