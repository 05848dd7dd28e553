"""
The platform side of the money fault test (L{tests.system.test_money_fault}): a
L{tvlink.PlatformService} with an in-doubt journal, issuing purchases and
refunds over a set of cards until a quota of journalled transactions is
reached, then waiting (bounded) until every journal entry is final.

    python -m tests.moneydriver --journal PATH --connect HOST:PORT [--connect ...] \\
        --cards PAN,PAN,... --quota N [options]

It is restartable: run again with the same journal, it counts what is
already journalled towards the quota, refunds only purchases the journal
holds as approved, and the service itself resumes the reversals left
unfinished. It writes machine-readable lines on stdout, each starting with
C{MONEYDRIVER}:

    MONEYDRIVER READY base=N quota=Q purchases=P
    MONEYDRIVER PROGRESS journalled=N issued=I inflight=F unfinished=U
    MONEYDRIVER QUOTA-DONE journalled=N
    MONEYDRIVER SUMMARY {json}

and tvlink's own log to C{--log}. Exit status: 0 settled, 3 entries still
unfinished at the settle deadline, 2 bad arguments.
"""

import argparse
import json
import os
import random
import sqlite3
import sys

#: The STAN/key fields the answer repeats; kept with an approved purchase.
KEY_FIELDS = ("sender", "stan", "time")


def maskPan(pan):
    """
    The journal's own masking (L{tvlink.platform.journal.maskedPan}): the platform
    keeps card numbers masked, so a card is found again by its mask.
    """
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def parseArgs(argv):
    parser = argparse.ArgumentParser(prog="moneydriver", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--journal", required=True, help="the platform journal file")
    parser.add_argument(
        "--connect",
        required=True,
        action="append",
        help="HOST:PORT of the payment side (or proxy); again for more payment nodes, balanced",
    )
    parser.add_argument("--cards", required=True, help="comma-separated card numbers")
    parser.add_argument("--quota", type=int, required=True, help="journalled transactions in total")
    parser.add_argument("--in-flight", type=int, default=12, help="requests in flight at once")
    parser.add_argument("--rate", type=float, default=0.0, help="requests started per second (0: no pacing)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sender", default="PLATFORM")
    parser.add_argument("--timeout", type=float, default=1.0, help="platform -> payment budget")
    parser.add_argument("--terminal-deadline", type=float, default=2.0)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--idle-timeout", type=float, default=3.0)
    parser.add_argument("--connect-timeout", type=float, default=2.0)
    parser.add_argument("--cooldown", type=float, default=1.0, help="circuit-breaker cool-down")
    parser.add_argument(
        "--reconnect-max-delay", type=float, default=2.0,
        help="cap of the reconnect backoff (tvlink's default is 60 s)",
    )
    parser.add_argument(
        "--reversal-max-delay", type=float, default=4.0,
        help="cap of the reversal retry backoff (tvlink's default is 60 s)",
    )
    parser.add_argument("--max-amount", type=int, default=500, help="largest purchase in fen")
    parser.add_argument("--refund-share", type=float, default=0.3)
    parser.add_argument("--run-timeout", type=float, default=180.0, help="stop issuing after this")
    parser.add_argument("--settle-timeout", type=float, default=60.0, help="wait this long for finality")
    parser.add_argument("--progress-interval", type=float, default=0.5)
    parser.add_argument("--log", default=None, help="tvlink's log (default: stderr, warnings only)")
    args = parser.parse_args(argv)
    if args.quota < 0 or args.in_flight < 1:
        parser.error("--quota must be >= 0 and --in-flight >= 1")
    if args.settle_timeout <= 0 or args.run_timeout <= 0:
        parser.error("--settle-timeout and --run-timeout must be positive")
    args.cards = [c.strip() for c in args.cards.split(",") if c.strip()]
    if not args.cards:
        parser.error("--cards needs at least one card")
    masks = {maskPan(c) for c in args.cards}
    if len(masks) != len(args.cards):
        parser.error("--cards must differ in their first 6 or last 4 digits (the journal masks the rest)")
    return args


def readJournal(path, sender, cards):
    """
    What an earlier run left in the journal: how many entries, and the
    approved purchases with what is left to refund of each.

    @return: C{(count, purchases)}, C{purchases} a C{dict} from key to
        C{{"pan", "amount", "left"}}.
    """
    if not os.path.exists(path):
        return 0, {}
    byMask = {maskPan(c): c for c in cards}
    conn = sqlite3.connect(path, timeout=10)
    try:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE name = 'entries'").fetchall()
        if not tables:
            return 0, {}
        count = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        purchases = {}
        for stan, when, pan, amount in conn.execute(
            "SELECT stan, time, pan, amount FROM entries WHERE sender = ? AND mti = '0200'"
            " AND proc = '000000' AND state = 'approved'",
            (sender,),
        ):
            if pan in byMask:
                amount = int(amount)
                purchases[(sender, stan, when)] = {"pan": byMask[pan], "amount": amount, "left": amount}
        # Refunds that moved money, or may have: approved, or not final yet
        # (an in-doubt refund is reversed, but count it until then).
        for orig, amount in conn.execute(
            "SELECT orig, amount FROM entries WHERE mti = '0220' AND state IN"
            " ('approved', 'pending', 'in-doubt')"
        ):
            orig = json.loads(orig) if orig else {}
            key = (orig.get("sender"), orig.get("stan"), orig.get("time"))
            if key in purchases:
                purchases[key]["left"] -= int(amount)
        return count, purchases
    finally:
        conn.close()


def say(*words):
    sys.stdout.write("MONEYDRIVER " + " ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


class Driver:
    """
    Keeps C{in_flight} requests going until C{toIssue} have been issued.
    """

    def __init__(self, args, service, reactor, base, purchases):
        self.args = args
        self.service = service
        self.reactor = reactor
        self.random = random.Random("%d/%d" % (args.seed, base))
        self.base = base
        self.toIssue = max(0, args.quota - base)
        self.purchases = purchases
        self.issued = 0
        self.inFlight = 0
        self.finished = 0
        self.nextAt = 0.0
        self.answers = {}
        self.errors = {}
        self.inDoubt = 0
        self.started = reactor.seconds()

    def message(self):
        """
        The next request: a refund of part of a purchase seen approved, or
        a purchase; and the purchase a refund draws on (or C{None}).
        """
        rnd = self.random
        refundable = [k for k, p in self.purchases.items() if p["left"] > 0]
        if refundable and rnd.random() < self.args.refund_share:
            key = rnd.choice(refundable)
            purchase = self.purchases[key]
            amount = rnd.randint(1, purchase["left"])
            purchase["left"] -= amount
            message = {
                "mti": "0220",
                "proc": "200000",
                "pan": purchase["pan"],
                "amount": "%012d" % (amount,),
                "currency": "156",
                "orig": dict(zip(("mti",) + KEY_FIELDS, ("0200",) + key)),
                "order": "R%d" % (self.base + self.issued,),
            }
            return message, key, amount
        message = {
            "mti": "0200",
            "proc": "000000",
            "pan": rnd.choice(self.args.cards),
            "amount": "%012d" % (rnd.randint(1, self.args.max_amount),),
            "currency": "156",
            "order": "P%d" % (self.base + self.issued,),
        }
        return message, None, 0

    def pace(self):
        from twisted.internet import task

        rate = self.args.rate
        if rate <= 0:
            return None
        now = self.reactor.seconds()
        self.nextAt = max(now, self.nextAt) + 1.0 / rate
        delay = self.nextAt - now - 1.0 / rate
        if delay <= 0:
            return None
        return task.deferLater(self.reactor, delay, lambda: None)

    def more(self):
        return self.issued < self.toIssue and self.reactor.seconds() - self.started < self.args.run_timeout

    def worker(self):
        from twisted.internet import defer

        from tvlink.errors import InDoubt

        @defer.inlineCallbacks
        def run():
            while self.more():
                wait = self.pace()
                if wait is not None:
                    yield wait
                    if not self.more():
                        break
                message, refundOf, refunded = self.message()
                self.issued += 1
                self.inFlight += 1
                try:
                    answer = yield self.service.request(message)
                except InDoubt:
                    self.inDoubt += 1
                    self.errors["InDoubt"] = self.errors.get("InDoubt", 0) + 1
                    # Keep a refund in doubt counted against its purchase.
                except Exception as e:
                    name = type(e).__name__
                    self.errors[name] = self.errors.get(name, 0) + 1
                    if refundOf is not None:
                        self.purchases[refundOf]["left"] += refunded
                else:
                    resp = answer.get("resp")
                    self.answers[resp] = self.answers.get(resp, 0) + 1
                    if resp == "00" and refundOf is None:
                        key = tuple(answer[f] for f in KEY_FIELDS)
                        amount = int(message["amount"])
                        self.purchases[key] = {"pan": message["pan"], "amount": amount, "left": amount}
                    elif resp != "00" and refundOf is not None:
                        self.purchases[refundOf]["left"] += refunded
                finally:
                    self.inFlight -= 1
                    self.finished += 1

        return run()


def summarise(journal):
    """
    A L{Deferred} of the journal's totals.
    """
    from twisted.internet import defer

    def totals(conn):
        out = {"states": dict(conn.execute("SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall())}
        out["entries"] = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        out["inDoubtEpisodes"] = conn.execute(
            "SELECT COUNT(*) FROM entries WHERE reversal_stan IS NOT NULL"
        ).fetchone()[0]
        out["reversalsSent"] = conn.execute(
            "SELECT COALESCE(SUM(reversal_attempts), 0) FROM entries"
        ).fetchone()[0]
        out["lateAnswers"] = conn.execute(
            "SELECT COUNT(*) FROM entries WHERE late_resp IS NOT NULL"
        ).fetchone()[0]
        out["unsent"] = conn.execute(
            "SELECT COUNT(*) FROM entries WHERE state = 'declined' AND resp = '91' AND reason IS NOT NULL"
        ).fetchone()[0]
        return out

    return defer.maybeDeferred(journal.store.submit, totals)


def main(argv=None):
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    # Run as a script, this file's folder is sys.path[0], and its
    # sub-folders (tests/platform ...) would shadow the standard library's
    # modules of the same name (platform, which attrs and so Twisted
    # import): only the checkout's root goes on the path.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    root = os.path.dirname(here)
    if root not in sys.path:
        sys.path.insert(0, root)

    from twisted.internet import defer, reactor, task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from tvlink.platform.factory import PlatformFactory
    from tvlink.platform.reversals import Reversals
    from tvlink.platform.service import PlatformService

    if args.log:
        logFile = open(args.log, "a", encoding="utf-8")
        globalLogBeginner.beginLoggingTo([textFileLogObserver(logFile)], redirectStandardIO=False)
    else:
        predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
        globalLogBeginner.beginLoggingTo(
            [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])], redirectStandardIO=False
        )

    # The test runs minutes, not hours: cap the two backoffs that default
    # to a minute (no service option sets them).
    PlatformFactory.maxDelay = args.reconnect_max_delay
    Reversals.maxDelay = args.reversal_max_delay

    base, purchases = readJournal(args.journal, args.sender, args.cards)
    service = PlatformService(
        args.connect,
        journal="sqlite:" + args.journal,
        timeout=args.timeout,
        terminal_deadline=args.terminal_deadline,
        heartbeat=args.heartbeat,
        idle_timeout=args.idle_timeout,
        connect_timeout=args.connect_timeout,
        cooldown=args.cooldown,
        ramp=args.cooldown,
        sender=args.sender,
        reactor=reactor,
    )
    driver = Driver(args, service, reactor, base, purchases)
    outcome = {"status": 1}

    def progress():
        say(
            "PROGRESS journalled=%d issued=%d inflight=%d finished=%d reversing=%d"
            % (
                base + driver.issued,
                driver.issued,
                driver.inFlight,
                driver.finished,
                service.reversals.outstanding() if service.reversals is not None else 0,
            )
        )

    ticker = task.LoopingCall(progress)

    @defer.inlineCallbacks
    def run():
        service.startService()
        say(
            "READY base=%d quota=%d toissue=%d purchases=%d"
            % (base, args.quota, driver.toIssue, len(purchases))
        )
        ticker.start(args.progress_interval, now=True)
        workers = [driver.worker() for _ in range(args.in_flight)]
        yield defer.DeferredList(workers, consumeErrors=True)
        say(
            "QUOTA-DONE journalled=%d issued=%d elapsed=%.1f"
            % (base + driver.issued, driver.issued, reactor.seconds() - driver.started)
        )
        deadline = reactor.seconds() + args.settle_timeout
        unfinished = None
        while True:
            entries = yield service.journal.unfinished()
            unfinished = len(entries)
            if not unfinished or reactor.seconds() >= deadline:
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        totals = yield summarise(service.journal)
        totals.update(
            {
                "unfinished": unfinished,
                "base": base,
                "issued": driver.issued,
                "answers": driver.answers,
                "errors": driver.errors,
                "inDoubtThisRun": driver.inDoubt,
                "elapsed": round(reactor.seconds() - driver.started, 2),
            }
        )
        ticker.stop()
        say("SUMMARY " + json.dumps(totals, sort_keys=True))
        outcome["status"] = 0 if not unfinished else 3

    def stop(result):
        stopping = service.stopService() if service.running else defer.succeed(None)
        # Bounded: whatever the links do, leave within 10 s.
        guard = reactor.callLater(10, reactor.stop)

        def done(_):
            if guard.active():
                guard.cancel()
            if reactor.running:
                reactor.stop()

        stopping.addBoth(done)
        return result

    def failed(failure):
        sys.stderr.write("moneydriver failed:\n%s\n" % (failure.getTraceback(),))
        sys.stderr.flush()
        outcome["status"] = 1

    def begin():
        d = run()
        d.addErrback(failed)
        d.addBoth(stop)

    reactor.callWhenRunning(begin)
    reactor.run()
    sys.stdout.flush()
    sys.stderr.flush()
    if args.log:
        logFile.flush()
    # The journal's writer thread is a daemon; leave without joining it.
    os._exit(outcome["status"])


if __name__ == "__main__":
    main()
