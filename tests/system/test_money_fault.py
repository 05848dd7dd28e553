"""
The money fault test: thousands of purchases and refunds between a real
platform process and a real payment process, through a fault proxy that
delays beyond the timeout, drops, resets, black-holes and half-closes at
random, with C{kill -9} of the payment process and of the platform process
part-way and restarts on the same ledger and journal. Afterwards every
platform journal entry must be final, every account must reconcile against
what the platform saw approved, and no key may stand twice in the ledger.

    payment   twistd -n tvlink payment --ledger sqlite:LEDGER ...   (child)
    proxy     L{tvlink.testing.faultproxy.FaultProxy}                      (in this process)
    platform  python -m tests.moneydriver --journal JOURNAL ...     (child)

Environment: C{TVLINK_FAULT_TRANSACTIONS} (default 2000),
C{TVLINK_FAULT_SECONDS} (how long the issuing should take, default 45),
C{TVLINK_FAULT_SEED} (default: a fresh one, printed),
C{TVLINK_FAULT_BACKEND_TIMEOUT} (the payment side's C{--backend-timeout},
default its own 30 s; a few milliseconds exercises its abandon-and-answer-91 path),
C{TVLINK_FAULT_KEEP=1} keeps the files (ledger, journal, every child's
output) and prints where; they are kept anyway when the test fails. The
seed fixes the fault schedule and the traffic, not the timing. Run with C{python -m pytest -s tests/system/test_money_fault.py} or
C{python -m twisted.trial tests.system.test_money_fault}.
"""

import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile

from twisted.internet import defer

from tests.processes import (
    ROOT,
    ProcessGone,
    ReactorTestCase,
    TwistdProcess,
    getReactor,
    pause,
    startPayment,
    waitUntil,
)
from tvlink.testing.faultproxy import FaultProxy

TRANSACTIONS = int(os.environ.get("TVLINK_FAULT_TRANSACTIONS", "2000"))
SECONDS = float(os.environ.get("TVLINK_FAULT_SECONDS", "45"))
SEED = os.environ.get("TVLINK_FAULT_SEED")
KEEP = bool(os.environ.get("TVLINK_FAULT_KEEP"))

#: Twenty cards, told apart by their last four digits (the platform
#: journal keeps card numbers masked: first 6 and last 4).
CARDS = ["622202000000000%04d" % (n,) for n in range(1, 21)]
#: Opening balances in fen; two cards small enough to be declined 51.
OPENING = {pan: (3000 if n in (7, 15) else 60000) for n, pan in enumerate(CARDS, 1)}

SENDER = "PLATFORM"
PLATFORM_TIMEOUT = 1.0
HEARTBEAT = 0.5
IDLE_TIMEOUT = 3.0
PAYMENT_ARGS = ("--heartbeat", str(HEARTBEAT), "--idle-timeout", str(IDLE_TIMEOUT))
if os.environ.get("TVLINK_FAULT_BACKEND_TIMEOUT"):
    # Exercise the payment side's own timeout (abandon: 91 only if not applied).
    PAYMENT_ARGS += ("--backend-timeout", os.environ["TVLINK_FAULT_BACKEND_TIMEOUT"])
IN_FLIGHT = 12
SETTLE_SECONDS = 60.0

FINAL = ("approved", "declined", "reversed")
#: Ledger states of a purchase or refund that moved money and stands.
STANDING = ("approved", "refunded")


def maskPan(pan):
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def spawnPython(testCase, args, name, cwd):
    """
    Start C{python ARGS...} as a child (stopped in cleanup).
    """
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    child = TwistdProcess(name)
    argv = [sys.executable] + [str(a) for a in args]
    getReactor().spawnProcess(child, sys.executable, argv, env=env, path=cwd)
    testCase.addCleanup(child.stop)
    return child


class Chaos:
    """
    Switches a L{FaultProxy} among its modes at random (seeded) every few
    hundred milliseconds, mostly C{pass} so that work gets done, and
    remembers every switch.
    """

    #: (weight, mode, directions): directions the mode may be set for.
    CHOICES = (
        (50, "pass", ("both",)),
        (10, "delay", ("both", "up", "down")),
        (4, "delay-short", ("both",)),
        (9, "drop", ("both", "up", "down")),
        (8, "reset", ("both",)),
        (9, "blackhole", ("both", "up", "down")),
        (3, "halfclose", ("down",)),
    )

    def __init__(self, proxy, rnd, reactor):
        self.proxy = proxy
        self.random = rnd
        self.reactor = reactor
        self.call = None
        self.started = None
        self.switches = []
        self.counts = {}

    def start(self):
        self.started = self.reactor.seconds()
        self._next()

    def _next(self):
        rnd = self.random
        total = sum(w for w, _, _ in self.CHOICES)
        pick = rnd.uniform(0, total)
        for weight, name, directions in self.CHOICES:
            pick -= weight
            if pick <= 0:
                break
        direction = rnd.choice(directions)
        params = {}
        if name == "delay":
            # Beyond the platform's timeout: the answer comes too late.
            params["seconds"] = round(rnd.uniform(PLATFORM_TIMEOUT * 1.2, PLATFORM_TIMEOUT * 2.5), 2)
        elif name == "delay-short":
            name, params["seconds"] = "delay", round(rnd.uniform(0.05, PLATFORM_TIMEOUT * 0.6), 2)
        if name == "pass":
            hold = rnd.uniform(0.3, 1.2)
        elif name == "delay" and params["seconds"] > PLATFORM_TIMEOUT:
            # Held past the timeout: switching to pass flushes what is
            # queued, so a shorter spell would only slow answers down.
            hold = rnd.uniform(PLATFORM_TIMEOUT * 1.1, params["seconds"] + 0.5)
        else:
            hold = rnd.uniform(0.15, 0.6)
        self.set(name, direction, **params)
        self.call = self.reactor.callLater(hold, self._next)

    def set(self, name, direction="both", **params):
        if direction == "both":
            self.proxy.setMode(name, direction="both", **params)
        else:
            # One direction faulty, the other clean.
            other = "down" if direction == "up" else "up"
            self.proxy.setMode("pass", direction=other)
            self.proxy.setMode(name, direction=direction, **params)
        label = name + ("" if direction == "both" else "/" + direction)
        if "seconds" in params:
            label += ":%g" % (params["seconds"],)
        self.switches.append((self.reactor.seconds() - (self.started or self.reactor.seconds()), label))
        kind = name + ("" if direction == "both" else "/" + direction)
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def stop(self):
        """
        Stop switching and leave the proxy in C{pass}.
        """
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        self.set("pass")

    def describe(self):
        lines = ["faults: %d switches; %s" % (
            len(self.switches), ", ".join("%s %d" % kv for kv in sorted(self.counts.items())))]
        row = []
        for at, label in self.switches:
            row.append("%6.2fs %-22s" % (at, label))
            if len(row) == 4:
                lines.append("  " + " ".join(row))
                row = []
        if row:
            lines.append("  " + " ".join(row))
        return "\n".join(lines)


def journalled(child):
    """
    The last C{journalled=N} a driver reported, or -1; raises if the
    driver has ended.
    """
    for line in reversed(child.stdout):
        if line.startswith("MONEYDRIVER PROGRESS journalled="):
            return int(line.split()[2].split("=")[1])
    return -1


def reachedQuota(child, count):
    def predicate():
        if not child.running:
            raise ProcessGone("%s ended (status %s)\n%s" % (child.name, child.status, child.tail()))
        return journalled(child) >= count

    return predicate


def readOnly(path):
    return sqlite3.connect("file:%s?mode=ro" % (path,), uri=True, timeout=10)


def verify(journalPath, ledgerPath, pans=CARDS, openingOf=OPENING, openLedger=readOnly):
    """
    Check the platform journal against the payment ledger.

    @param pans: the card numbers traded on, C{openingOf} their opening
        balances.
    @param openLedger: C{openLedger(ledgerPath)}, a connection to the
        ledger (a read-only SQLite one by default; any with C{execute}).
    @return: C{(report, problems)}: the totals as a C{dict}, and a list of
        what is wrong (empty when the money is right).
    """
    problems = []
    byMask = {maskPan(pan): pan for pan in pans}
    jconn = readOnly(journalPath)
    try:
        entries = jconn.execute(
            "SELECT sender, stan, time, mti, proc, pan, amount, orig, state, resp, late_resp,"
            " reversal_stan, reversal_time, reversal_attempts, reason FROM entries"
        ).fetchall()
    finally:
        jconn.close()
    lconn = openLedger(ledgerPath)
    try:
        accounts = dict(lconn.execute("SELECT pan, balance FROM accounts").fetchall())
        openings = dict(lconn.execute("SELECT pan, opening FROM accounts").fetchall())
        ledgerRows = lconn.execute(
            "SELECT sender, stan, time, mti, proc, pan, amount, orig_sender, orig_stan, orig_time,"
            " resp, state FROM journal"
        ).fetchall()
        duplicates = lconn.execute(
            "SELECT sender, stan, time, COUNT(*) FROM journal"
            " GROUP BY sender, stan, time HAVING COUNT(*) > 1"
        ).fetchall()
    finally:
        lconn.close()

    report = {
        "transactions": len(entries),
        "purchases": 0,
        "refunds": 0,
        "states": {},
        "declinedBy": {},
        "inDoubt": 0,
        "unsent": 0,
        "reversalsSent": 0,
        "lateAnswers": 0,
        "ledgerEntries": len(ledgerRows),
        "ledgerReversals": 0,
        "ledgerTombstones": 0,
        "ledgerReversedOriginals": 0,
        "ledgerOvertaken": 0,
        "ledgerVoided": 0,
        "ledgerStates": {},
    }
    perCard = {pan: {"purchased": 0, "refunded": 0} for pan in pans}
    platform = {}
    for row in entries:
        sender, stan, when, mti, proc, pan, amount, orig, state, resp, late = row[:11]
        rstan, rtime, attempts, reason = row[11:]
        key = (sender, stan, when)
        # Declined 91 with a reason: the platform never wrote it to a link
        # (no link in time); without one, the payment side answered 91.
        unsent = state == "declined" and resp == "91" and reason is not None
        platform[key] = {
            "mti": mti, "state": state, "resp": resp, "unsent": unsent,
            "reversal": (sender, rstan, rtime) if rstan else None,
        }
        if unsent:
            report["unsent"] += 1
        report["states"][state] = report["states"].get(state, 0) + 1
        report["purchases" if mti == "0200" else "refunds"] += 1
        if state not in FINAL:
            problems.append("platform entry %s (%s) is still %s" % ("/".join(key), mti, state))
        if state == "declined":
            report["declinedBy"][resp] = report["declinedBy"].get(resp, 0) + 1
        if rstan:
            report["inDoubt"] += 1
        report["reversalsSent"] += attempts or 0
        if late is not None:
            report["lateAnswers"] += 1
        if state == "approved":
            card = byMask.get(pan)
            if card is None:
                problems.append("approved entry %s on unknown card %s" % ("/".join(key), pan))
                continue
            if mti == "0200":
                perCard[card]["purchased"] += int(amount)
            else:
                perCard[card]["refunded"] += int(amount)

    # Every account: opening - approved purchases + approved refunds.
    cards = []
    for pan in pans:
        opening = openings.get(pan)
        balance = accounts.get(pan)
        moved = perCard[pan]
        expected = None if opening is None else opening - moved["purchased"] + moved["refunded"]
        cards.append(dict(moved, pan=pan, opening=opening, expected=expected, balance=balance))
        if opening != openingOf[pan]:
            problems.append("card %s opened with %r, not %d" % (maskPan(pan), opening, openingOf[pan]))
        if expected != balance:
            problems.append(
                "card %s: expected %s fen (opening %s - purchases %d + refunds %d), ledger has %s"
                % (maskPan(pan), expected, opening, moved["purchased"], moved["refunded"], balance)
            )
    report["cards"] = cards

    # No key twice; every key's ledger outcome matches the platform's.
    for sender, stan, when, count in duplicates:
        problems.append("ledger holds key %s/%s/%s %d times" % (sender, stan, when, count))
    reversalKeys = {}
    for key, entry in platform.items():
        reversal = entry["reversal"]
        if reversal is None:
            continue
        if reversal in reversalKeys or reversal in platform:
            problems.append("reversal key %s of %s is used twice" % ("/".join(reversal), "/".join(key)))
        reversalKeys[reversal] = key
    ledger = {}
    for (sender, stan, when, mti, proc, pan, amount, osender, ostan, otime, resp, state) in ledgerRows:
        key = (sender, stan, when)
        ledger[key] = {"mti": mti, "proc": proc, "state": state, "resp": resp}
        report["ledgerStates"][state] = report["ledgerStates"].get(state, 0) + 1
        if state == "reversed" and resp == "91":
            # Applied after the payment side had answered 91: the payment
            # side must answer 91 only for what it durably did not apply.
            report["ledgerVoided"] += 1
            problems.append("ledger entry %s applied after answering 91" % ("/".join(key),))
        if mti == "0420":
            report["ledgerReversals"] += 1
            orig = (osender, ostan, otime)
            target = platform.get(orig)
            if reversalKeys.get(key) != orig:
                problems.append(
                    "ledger reversal %s of %s was not sent by the platform for that entry"
                    % ("/".join(key), "/".join(map(str, orig)))
                )
            if target is not None and target["state"] != "reversed":
                problems.append(
                    "ledger reversal %s undid %s, which the platform holds as %s"
                    % ("/".join(key), "/".join(orig), target["state"])
                )
    for key, entry in ledger.items():
        if entry["mti"] not in ("0200", "0220") or entry["proc"] not in ("000000", "200000"):
            continue
        mine = platform.get(key)
        if mine is None:
            problems.append(
                "ledger applied %s %s, which the platform never journalled" % (entry["mti"], "/".join(key))
            )
            continue
        standing = entry["state"] in STANDING
        if mine["state"] == "approved" and not standing:
            problems.append(
                "platform holds %s approved; the ledger has it %s (%s)"
                % ("/".join(key), entry["state"], entry["resp"])
            )
        elif mine["state"] != "approved" and standing:
            problems.append(
                "platform holds %s %s (resp %s); the ledger has it standing as %s"
                % ("/".join(key), mine["state"], mine["resp"], entry["state"])
            )
        if mine["unsent"]:
            problems.append(
                "%s was never sent, says the platform (declined 91), but the ledger has it %s"
                % ("/".join(key), entry["state"])
            )
    for key, mine in platform.items():
        if mine["state"] == "approved" and key not in ledger:
            problems.append("platform holds %s approved; the ledger never saw it" % ("/".join(key),))
        if mine["reversal"] is not None and key not in ledger:
            report["ledgerTombstones"] += 1
        if mine["reversal"] is not None and ledger.get(key, {}).get("state") == "reversed":
            if ledger[key]["resp"] == "00":
                report["ledgerReversedOriginals"] += 1
            elif ledger[key]["resp"] == "12":
                # Declined on arrival: its reversal had overtaken it.
                report["ledgerOvertaken"] += 1

    totalOpening = sum(c["opening"] or 0 for c in cards)
    report["totals"] = {
        "opening": totalOpening,
        "purchased": sum(c["purchased"] for c in cards),
        "refunded": sum(c["refunded"] for c in cards),
        "expected": sum(c["expected"] or 0 for c in cards),
        "balance": sum(c["balance"] or 0 for c in cards),
    }
    return report, problems


def table(report):
    """
    The report as the lines to print.
    """
    s = report["states"]
    lines = [
        "transactions %d (purchases %d, refunds %d): approved %d, declined %d, reversed %d, unfinished %d"
        % (
            report["transactions"], report["purchases"], report["refunds"], s.get("approved", 0),
            s.get("declined", 0), s.get("reversed", 0),
            sum(v for k, v in s.items() if k not in FINAL),
        ),
        "declined by response code: %s; of the 91s, %d were never sent (no link in time)"
        % (
            ", ".join("%s: %d" % (k, v) for k, v in sorted(report["declinedBy"].items(), key=str)) or "none",
            report["unsent"],
        ),
        "in-doubt episodes %d, reversal attempts %d, late answers %d"
        % (report["inDoubt"], report["reversalsSent"], report["lateAnswers"]),
        "ledger: %d journal entries (%s); %d reversals (0420): %d undid an applied original,"
        " %d found none (tombstone), %d overtook an original that came later"
        % (
            report["ledgerEntries"],
            ", ".join("%s %d" % kv for kv in sorted(report["ledgerStates"].items())),
            report["ledgerReversals"], report["ledgerReversedOriginals"], report["ledgerTombstones"],
            report["ledgerOvertaken"],
        ),
        "ledger: %d applied after the payment side had answered 91 (must be 0)" % (report["ledgerVoided"],),
        "%-21s %9s %10s %9s %10s %10s" % ("card", "opening", "purchases", "refunds", "expected", "ledger"),
    ]
    for c in report["cards"]:
        lines.append(
            "%-21s %9s %10d %9d %10s %10s  %s"
            % (
                maskPan(c["pan"]), c["opening"], c["purchased"], c["refunded"], c["expected"], c["balance"],
                "ok" if c["expected"] == c["balance"] else "MISMATCH",
            )
        )
    t = report["totals"]
    lines.append(
        "%-21s %9d %10d %9d %10d %10d  %s"
        % (
            "total", t["opening"], t["purchased"], t["refunded"], t["expected"], t["balance"],
            "ok" if t["expected"] == t["balance"] else "MISMATCH",
        )
    )
    return lines


class MoneyFaultTests(ReactorTestCase):
    """
    Money is never lost or doubled, whatever the network and the
    processes do.
    """

    timeout = 300

    def say(self, text):
        self.output.append(text)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def saveOutput(self, children):
        """
        Write what each child printed next to the ledger and journal.
        """
        for n, child in enumerate(children):
            name = "%d-%s.out" % (n, child.name.replace(" ", "-").replace("(", "").replace(")", ""))
            with open(os.path.join(self.dir, name), "w", encoding="utf-8") as out:
                out.write("\n".join(child.lines) + "\n")

    @defer.inlineCallbacks
    def openAccounts(self, ledgerPath, cwd):
        """
        Create the ledger and open every card through the admin command,
        a few at a time.
        """
        cli = ["-m", "tvlink", "ledger", "--db", ledgerPath]
        child = spawnPython(self, cli + ["init"], "tvlink ledger init", cwd)
        status = yield child.whenEnded(30)
        self.assertEqual(status, 0, child.tail())
        pending = list(CARDS)
        while pending:
            batch, pending = pending[:5], pending[5:]
            children = [
                spawnPython(self, cli + ["open", pan, str(OPENING[pan])], "tvlink ledger open", cwd)
                for pan in batch
            ]
            for child in children:
                status = yield child.whenEnded(30)
                self.assertEqual(status, 0, child.tail())

    def startDriver(self, name):
        args = [
            # As a module: run as a script, its folder would come first on
            # sys.path and tests/platform would hide the standard library's
            # platform module.
            "-m", "tests.moneydriver",
            "--journal", self.journalPath,
            "--connect", "127.0.0.1:%d" % (self.proxy.port,),
            "--cards", ",".join(CARDS),
            "--quota", TRANSACTIONS,
            "--in-flight", IN_FLIGHT,
            "--rate", "%.3f" % (TRANSACTIONS / SECONDS,),
            "--seed", self.seed,
            "--sender", SENDER,
            "--timeout", PLATFORM_TIMEOUT,
            "--terminal-deadline", 2 * PLATFORM_TIMEOUT,
            "--heartbeat", HEARTBEAT,
            "--idle-timeout", IDLE_TIMEOUT,
            "--settle-timeout", SETTLE_SECONDS,
            "--run-timeout", max(60.0, SECONDS * 3),
            "--log", os.path.join(self.dir, "platform.log"),
        ]
        child = spawnPython(self, args, name, self.dir)
        return child

    @defer.inlineCallbacks
    def test_moneyThroughFaultsAndKills(self):
        """
        Purchases and refunds through random faults and two C{kill -9}s:
        every journal entry ends final, every account reconciles, no key
        is applied twice.
        """
        reactor = getReactor()
        began = reactor.seconds()
        self.output = []
        self.seed = int(SEED) if SEED else random.SystemRandom().randrange(1, 10**9)
        rnd = random.Random(self.seed)
        self.dir = tempfile.mkdtemp(prefix="tvlink-money-")
        passed = []
        if KEEP:
            self.say("files kept in %s" % (self.dir,))
        else:
            # Kept when the test fails, for the post-mortem.
            self.addCleanup(lambda: passed and shutil.rmtree(self.dir, True))
        self.ledgerPath = os.path.join(self.dir, "ledger.db")
        self.journalPath = os.path.join(self.dir, "journal.db")
        self.say(
            "money fault test: seed %d (TVLINK_FAULT_SEED), %d transactions (TVLINK_FAULT_TRANSACTIONS)"
            " over about %gs (TVLINK_FAULT_SECONDS)" % (self.seed, TRANSACTIONS, SECONDS)
        )

        yield self.openAccounts(self.ledgerPath, self.dir)
        setupDone = reactor.seconds()

        payment, port = yield startPayment(
            self, "--ledger", "sqlite:" + self.ledgerPath, *PAYMENT_ARGS, name="payment"
        )
        children = [payment]
        self.addCleanup(self.saveOutput, children)
        self.proxy = FaultProxy("127.0.0.1", port, reactor=reactor)
        yield self.proxy.start()
        self.addCleanup(self.proxy.stop)
        chaos = Chaos(self.proxy, rnd, reactor)
        self.addCleanup(lambda: chaos.call is not None and chaos.call.active() and chaos.call.cancel())

        platform = self.startDriver("platform")
        children.append(platform)
        yield platform.waitFor(r"^MONEYDRIVER READY", 30)
        runStarted = reactor.seconds()
        chaos.start()
        events = []

        try:
            # kill -9 the payment process part-way, restart it on the same port.
            killPaymentAt = int(TRANSACTIONS * rnd.uniform(0.25, 0.4))
            yield waitUntil(
                reachedQuota(platform, killPaymentAt), SECONDS * 2 + 60, "journalled %d" % (killPaymentAt,)
            )
            at = journalled(platform)
            payment.signal("KILL")
            status = yield payment.whenEnded(10)
            self.assertEqual(status, -9, payment.tail())
            down = rnd.uniform(0.3, 1.5)
            yield pause(down)
            payment, samePort = yield startPayment(
                self, "--ledger", "sqlite:" + self.ledgerPath, *PAYMENT_ARGS, port=port,
                name="payment (restarted)", seconds=20,
            )
            children.append(payment)
            self.assertEqual(samePort, port)
            events.append(
                "kill -9 payment at journalled=%d (%.1fs into the run), restarted on port %d after %.1fs"
                % (at, reactor.seconds() - runStarted, port, down)
            )

            # kill -9 the platform process later, restart it on the same journal.
            killPlatformAt = int(TRANSACTIONS * rnd.uniform(0.55, 0.7))
            yield waitUntil(
                reachedQuota(platform, killPlatformAt), SECONDS * 2 + 60, "journalled %d" % (killPlatformAt,)
            )
            at = journalled(platform)
            platform.signal("KILL")
            status = yield platform.whenEnded(10)
            self.assertEqual(status, -9, platform.tail())
            platform = self.startDriver("platform (restarted)")
            children.append(platform)
            ready = yield platform.waitFor(r"^MONEYDRIVER READY .*", 30)
            events.append(
                "kill -9 platform at journalled=%d (%.1fs into the run), restarted: %s"
                % (at, reactor.seconds() - runStarted, ready.line[len("MONEYDRIVER READY "):])
            )

            # The quota done, let everything settle through a clean link.
            done = yield platform.waitFor(r"^MONEYDRIVER QUOTA-DONE", SECONDS * 3 + 60)
            quotaDone = reactor.seconds()
            chaos.stop()
            events.append(
                "%s; proxy set to pass at %.1fs" % (done.line[len("MONEYDRIVER "):], quotaDone - runStarted)
            )
            status = yield platform.whenEnded(SETTLE_SECONDS + 30)
        finally:
            if chaos.call is not None:
                chaos.stop()
            self.say(chaos.describe())
            for event in events:
                self.say(event)
        settled = reactor.seconds()
        summaries = [line for line in platform.stdout if line.startswith("MONEYDRIVER SUMMARY ")]
        self.assertEqual(status, 0, "platform driver ended %s:\n%s" % (status, platform.tail()))
        self.assertEqual(len(summaries), 1, platform.tail())
        summary = json.loads(summaries[0][len("MONEYDRIVER SUMMARY "):])
        self.say("platform summary: %s" % (json.dumps(summary, sort_keys=True),))

        # Quiesce: no bytes left anywhere, the ledger closed cleanly.
        yield self.proxy.stop()
        status = yield payment.stop()
        self.assertIn(status, (0, -15), payment.tail())

        cli = ["-m", "tvlink", "ledger", "--db", self.ledgerPath, "check"]
        check = spawnPython(self, cli, "tvlink ledger check", self.dir)
        checkStatus = yield check.whenEnded(30)
        said = " / ".join(check.stdout[:1] + check.stdout[-1:])
        self.say("tvlink ledger check (exit %s): %s" % (checkStatus, said))

        report, problems = verify(self.journalPath, self.ledgerPath)
        for line in table(report):
            self.say(line)
        self.say(
            "timings: setup %.1fs, issuing %.1fs, settling %.1fs, whole test %.1fs"
            % (setupDone - began, quotaDone - runStarted, settled - quotaDone, reactor.seconds() - began)
        )
        # Neither side may have hit an error it did not handle.
        for child in children:
            for line in child.lines:
                if "Unhandled Error" in line or "Traceback" in line or "#critical]" in line:
                    problems.append("%s wrote: %s" % (child.name, line))
        with open(os.path.join(self.dir, "platform.log"), encoding="utf-8", errors="replace") as log:
            for line in log:
                if "Unhandled Error" in line or "Traceback" in line or "#critical]" in line:
                    problems.append("platform.log: " + line.rstrip())
        for problem in problems[:50]:
            self.say("PROBLEM: " + problem)
        if problems:
            self.say("%d problems; files in %s" % (len(problems), self.dir))
        self.assertEqual(problems, [], "\n".join(problems[:50]))
        self.assertEqual(checkStatus, 0, "\n".join(check.lines))
        self.assertEqual(summary["unfinished"], 0)
        self.assertEqual(report["transactions"], TRANSACTIONS)
        # The faults did bite: something went in doubt and was reversed.
        self.assertGreater(report["inDoubt"], 0)
        self.assertGreater(report["states"].get("approved", 0), TRANSACTIONS // 4)
        passed.append(True)
