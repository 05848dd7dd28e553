"""
The reconciliation file at the command line.

    tvlink ledger --db PATH reconcile-file --date YYYYMMDD --sender ID
        [--cutover HH:MM] [--writer ID] [--out PATH | --files-dir DIR]
    tvlink reconcile --journal PATH --file PATH [--csv PATH | --json PATH]

C{reconcile-file} writes the payment side's file of one sender and day
from the ledger (to standard output, to C{--out}, or into the sender's
directory of the file service). C{tvlink reconcile} checks such a file
against the platform's journal, prints a table, writes a machine copy,
and exits 0 when everything agrees, 1 when anything disagrees, 2 on bad
arguments, 3 when the file or the journal cannot be read.
"""

import argparse
import os
import time

from tvlink.cli.commands import CommandParser, parseArguments, streams
from tvlink.files import compare, reconcile
from tvlink.files.names import FileStore, NameRefused, checkSender
from tvlink.payment.errors import LedgerError

#: Exit statuses of C{tvlink reconcile}.
AGREE = 0
DISAGREE = 1
USAGE = 2
UNREADABLE = 3


def _checked(check):
    """
    An argparse C{type} running C{check}, its errors made usage errors.
    """

    def checked(text):
        try:
            return check(text)
        except (ValueError, NameRefused) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return checked


def _fileSender(sender):
    checkSender(sender)
    if len(sender) > reconcile.SENDER_WIDTH:
        raise ValueError("a reconciliation file has room for %d characters of sender, not %r"
                         % (reconcile.SENDER_WIDTH, sender))
    return sender


def addReconcileFileCommand(command):
    """
    Add C{reconcile-file} to C{tvlink ledger} (C{command} from
    L{tvlink.cli.commands.databaseParser}).
    """
    sub = command("reconcile-file", "write the reconciliation file of one sender and day")
    sub.add_argument("--date", required=True, metavar="YYYYMMDD", type=_checked(_date), help="the day")
    sub.add_argument("--sender", required=True, metavar="ID", type=_checked(_fileSender),
                     help="the sender institution (the platform's id)")
    sub.add_argument("--cutover", default="000000", metavar="HH:MM", type=_checked(reconcile.parseCutover),
                     help="the day's cut-over (default 00:00)")
    sub.add_argument("--writer", default="PAYMENT", metavar="ID", type=_checked(_fileSender),
                     help="this payment institution's id")
    where = sub.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="PATH", help="write here (default: standard output)")
    where.add_argument("--files-dir", metavar="DIR", help="write into the sender's directory of the file service")


def _date(text):
    reconcile.parseDate(text)
    return text


def dayRows(fetch, date, cutover):
    """
    The rows of day C{date} from C{fetch(start, end)} over each range of
    L{tvlink.files.reconcile.dayWindows}.
    """
    rows = []
    for start, end in reconcile.dayWindows(date, cutover):
        rows.extend(fetch(start, end))
    return rows


def reconcileFile(store, args, out):
    """
    C{tvlink ledger reconcile-file}: the file of C{args.sender} and
    C{args.date} from the ledger C{store}.
    """
    applied = reconcile.appliedRange(args.date)
    rows = dayRows(
        lambda start, end: store.moneyMovedBetween(start, end, args.sender, applied), args.date, args.cutover
    )
    text = reconcile.renderFile(args.date, args.sender, rows, args.writer, reconcile.createdText(time.time()), args.cutover)
    path = args.out
    if args.files_dir is not None:
        try:
            folder = FileStore(args.files_dir).directory(args.sender, create=True)
        except (ValueError, NameRefused) as e:
            raise LedgerError("--files-dir: %s" % (e,)) from None
        path = os.path.join(folder, reconcile.fileName(args.date))
    if path is None:
        out.write(text)
        return 0
    reconcile.writeAtomically(path, text)
    out.write("wrote %s: %d transactions of %s on %s\n" % (path, len(rows), args.sender, args.date))
    return 0


def _parser(out, err):
    parser = CommandParser(
        prog="tvlink reconcile",
        description="Check the payment side's reconciliation file against the platform's journal.",
        epilog="exit status: 0 everything agrees, 1 something disagrees, 2 bad arguments, "
        "3 the file or the journal cannot be read",
        out=out,
        err=err,
    )
    parser.add_argument("--journal", required=True, metavar="PATH", help="the platform's journal (PATH or sqlite:PATH)")
    parser.add_argument("--file", required=True, metavar="PATH", help="the reconciliation file")
    parser.add_argument("--sender", metavar="ID", help="whose entries to compare (default: the file's sender)")
    copy = parser.add_mutually_exclusive_group()
    copy.add_argument("--csv", metavar="PATH", help="write the result as CSV here ('-': standard output)")
    copy.add_argument("--json", metavar="PATH", help="write the result as JSON here ('-': standard output)")
    return parser


def main(argv=None, out=None, err=None):
    """
    Run C{tvlink reconcile ARGV...}; return the exit status.
    """
    from tvlink.cli.journal import JournalConnection, JournalMissing
    from tvlink.platform.journal import moneyMovingBetween, parseJournalOption

    out, err = streams(out, err)
    args, status = parseArguments(_parser(out, err), argv, USAGE)
    if args is None:
        return status
    try:
        with open(args.file, encoding="ascii") as f:
            header, details, _ = reconcile.readFile(f.read())
    except (OSError, UnicodeDecodeError, reconcile.BadReconciliationFile) as e:
        err.write("tvlink reconcile: %s: %s\n" % (args.file, e))
        return UNREADABLE
    sender = args.sender or header["sender"]
    try:
        path = parseJournalOption(args.journal)
    except ValueError as e:
        err.write("tvlink reconcile: --journal: %s\n" % (e,))
        return USAGE
    try:
        journal = JournalConnection.open(path, 10.0, readOnly=True)
    except JournalMissing as e:
        err.write("tvlink reconcile: %s\n" % (e,))
        return UNREADABLE
    try:
        created = reconcile.createdRange(header["date"])
        entries = dayRows(
            lambda start, end: moneyMovingBetween(journal.conn, start, end, sender, created),
            header["date"],
            header["cutover"],
        )
    except journal.Error as e:
        err.write("tvlink reconcile: journal %s: %s\n" % (journal.where, " ".join(str(e).split())))
        return UNREADABLE
    finally:
        journal.close()
    report = compare.compare(details, entries)
    out.write(compare.table(report, header))
    for target, render in ((args.csv, lambda: compare.asCSV(report)), (args.json, lambda: compare.asJSON(report, header))):
        if target == "-":
            out.write(render())
        elif target is not None:
            reconcile.writeAtomically(target, render())
    return DISAGREE if compare.disagrees(report) else AGREE
