"""
L{DailyReconciliation}: the payment role writes each sender's
reconciliation file of the day that has just ended, a little after the
day's cut-over, into that sender's directory of the file service.
"""

import datetime
import os

from twisted.application.service import Service
from twisted.internet.defer import gatherResults
from twisted.logger import Logger

from tvlink.files import reconcile
from tvlink.files.names import NameRefused

#: Seconds after the cut-over the files are written: the last requests of
#: the day (and their reversals) have had their answers by then.
DEFAULT_GRACE = 120.0


def dayEnding(now, cutover, tz=None):
    """
    C{(day, at)}: the next day (C{YYYYMMDD}) to end after the instant
    C{now} (seconds since the epoch) and the instant its window ends, for
    the cut-over C{HHMMSS} in the time zone C{tz} (local when C{None}).
    """
    local = datetime.datetime.fromtimestamp(now, tz)
    hours, minutes, seconds = int(cutover[:2]), int(cutover[2:4]), int(cutover[4:])
    at = local.replace(hour=hours, minute=minutes, second=seconds, microsecond=0)
    if at <= local:
        at += datetime.timedelta(days=1)
    day = at.date() if cutover != "000000" else at.date() - datetime.timedelta(days=1)
    return day.strftime("%Y%m%d"), at.timestamp()


def dayEnded(now, cutover, tz=None):
    """
    C{(day, at)}: the day (C{YYYYMMDD}) that ended last at or before the
    instant C{now}, and the instant it ended (the same cut-over a calendar
    day before the one L{dayEnding} gives, whatever the clocks did).
    """
    day, at = dayEnding(now, cutover, tz)
    ended = datetime.datetime.fromtimestamp(at, tz) - datetime.timedelta(days=1)
    previous = datetime.datetime.strptime(day, "%Y%m%d") - datetime.timedelta(days=1)
    return previous.strftime("%Y%m%d"), ended.timestamp()


class DailyReconciliation(Service):
    """
    Write C{RCYYYYMMDD.txt} for every sender with transactions in the day,
    at each cut-over plus C{grace} seconds.

    @param ledger: a L{tvlink.payment.ledger.PaymentLedger}.
    @param store: the file service's L{tvlink.files.names.FileStore}.
    @param writer: this payment institution's id, for the header.
    """

    log = Logger(namespace="tvlink.files")

    def __init__(self, ledger, store, writer, reactor, cutover="000000", grace=DEFAULT_GRACE, tz=None):
        self.ledger = ledger
        self.store = store
        self.writer = writer
        self.reactor = reactor
        self.cutover = reconcile.parseCutover(cutover)
        self.grace = grace
        self.tz = tz
        self._call = None
        self._catchUpCall = None
        self.written = []

    def startService(self):
        Service.startService(self)
        self._catchUp()
        self._schedule()

    def _catchUp(self):
        """
        The day that ended last, whose end this service may not have seen
        running: its files that are not there yet are written once its
        grace is over (at once if it is).
        """
        now = self.reactor.seconds()
        day, at = dayEnded(now, self.cutover, self.tz)
        self._catchUpCall = self.reactor.callLater(max(at + self.grace - now, 0), self._caughtUp, day)

    def _caughtUp(self, day):
        self._catchUpCall = None
        d = self.writeDay(day, missingOnly=True)
        d.addErrback(lambda f: self.log.failure("files: reconciliation files of {day} not written", f, day=day))

    def _schedule(self):
        day, at = dayEnding(self.reactor.seconds(), self.cutover, self.tz)
        self.nextDay = day
        self._call = self.reactor.callLater(max(at + self.grace - self.reactor.seconds(), 0), self._due, day)

    def _due(self, day):
        self._call = None
        d = self.writeDay(day)
        d.addErrback(lambda f: self.log.failure("files: reconciliation files of {day} not written", f, day=day))
        d.addBoth(lambda _: self._schedule() if self.running else None)

    def writeDay(self, day, missingOnly=False):
        """
        Write the files of C{day} (with C{missingOnly}, only those not
        there yet); a L{Deferred} of the paths written.
        """
        windows = reconcile.dayWindows(day, self.cutover)
        applied = reconcile.appliedRange(day)
        d = gatherResults([self.ledger.moneyMovedBetween(start, end, applied=applied) for start, end in windows])
        return d.addCallback(self._write, day, missingOnly)

    def _write(self, results, day, missingOnly):
        bySender = {}
        for rows in results:
            for row in rows:
                bySender.setdefault(row["sender"], []).append(row)
        created = reconcile.createdText(self.reactor.seconds())
        paths = []
        for sender, rows in sorted(bySender.items()):
            try:
                folder = self.store.directory(sender, create=True)
                path = os.path.join(folder, reconcile.fileName(day))
                if missingOnly and os.path.lexists(path):
                    continue
                reconcile.writeAtomically(path, reconcile.renderFile(day, sender, rows, self.writer, created, self.cutover))
            except (NameRefused, ValueError, OSError) as e:
                self.log.error(
                    "files: no reconciliation file of {day} for {sender}: {why}",
                    files_event="reconcile-failed",
                    day=day,
                    sender=sender,
                    why=str(e),
                )
                continue
            paths.append(path)
            self.log.info(
                "files: wrote the reconciliation file of {day} for {sender}: {count} transactions",
                files_event="reconcile-written",
                day=day,
                sender=sender,
                count=len(rows),
                path=path,
            )
        self.written.extend(paths)
        return paths

    def stopService(self):
        Service.stopService(self)
        for name in ("_call", "_catchUpCall"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
