#!/usr/bin/env python
"""
Durable purchases per second on the SQLite ledger: group commit against
one commit per transaction, in the same run, with the p99 answer time.

Each mode gets a fresh ledger file (WAL, C{synchronous=FULL}) with one
account per submitter, and a L{tvlink.payment.backend.LedgerHandler} in front of it
as on a payment node. C{--concurrency} submitters each keep one purchase
in flight (send, wait for the answer, send the next) until
C{--purchases} have been answered or C{--time-limit} seconds have passed.
An answer is counted only once its commit is durable, which is when the
ledger delivers it. The answer time runs from C{handler.handle()} to the
answer, taken with C{time.perf_counter} (for measurement only).

Run it on the disk the ledger will live on (C{--dir}); a disk that
acknowledges fsync from a volatile cache makes both modes look faster
than they are.

    python bench/ledger_bench.py [--purchases 5000] [--concurrency 64]
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from tvlink.payment.backend import LedgerHandler  # noqa: E402
from tvlink.payment.ledger import PaymentLedger  # noqa: E402

FIRST_PAN = 6222020000000000000


def percentile(values, fraction):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@defer.inlineCallbacks
def runMode(reactor, wheres, groupCommit, purchases, concurrency, timeLimit, name=None):
    """
    One mode: a ledger per entry of C{wheres} (a SQLite path or a
    PostgreSQL URL; the same one twice is two payment nodes on one
    database), C{concurrency} submitters spread over them, each keeping one
    purchase in flight.

    @param name: what the ledgers are, put before the commit mode in the
        result's C{mode}.
    """
    ledgers = [PaymentLedger(where, reactor=reactor, group_commit=groupCommit) for where in wheres]
    for ledger in ledgers:
        ledger.open()
    pans = ["%019d" % (FIRST_PAN + i,) for i in range(concurrency)]
    yield defer.gatherResults([ledgers[0].openAccount(pan, 10 ** 11) for pan in pans])
    handlers = [LedgerHandler(ledger, reactor=reactor) for ledger in ledgers]
    before = [ledger.stats() for ledger in ledgers]
    latencies = []
    answers = {}
    issued = [0]
    started = time.perf_counter()
    deadline = started + timeLimit

    @defer.inlineCallbacks
    def submitter(handler, pan):
        while issued[0] < purchases and time.perf_counter() < deadline:
            issued[0] += 1
            n = issued[0]
            request = {
                "mti": "0200",
                "proc": "000000",
                "sender": "BENCH",
                "stan": "%06d" % (n % 1000000,),
                "time": "%010d" % (n // 1000000,),
                "pan": pan,
                "amount": "000000000100",
                "currency": "156",
            }
            sent = time.perf_counter()
            answer = yield handler.handle(request)
            latencies.append(time.perf_counter() - sent)
            answers[answer["resp"]] = answers.get(answer["resp"], 0) + 1

    yield defer.gatherResults([submitter(handlers[n % len(handlers)], pan) for n, pan in enumerate(pans)])
    elapsed = time.perf_counter() - started
    after = [ledger.stats() for ledger in ledgers]
    report = yield ledgers[0].reconcile()
    for ledger in ledgers:
        yield ledger.close()
    commits = sum(a["commits"] - b["commits"] for a, b in zip(after, before))
    requests = sum(a["requests"] - b["requests"] for a, b in zip(after, before))
    done = len(latencies)
    mode = "group commit" if groupCommit else "commit per purchase"
    return {
        "mode": mode if name is None else "%s, %s" % (name, mode),
        "answered": done,
        "approved": answers.get("00", 0),
        "answers": answers,
        "seconds": elapsed,
        "tps": done / elapsed if elapsed else 0.0,
        "p50": percentile(latencies, 0.50) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "max": max(latencies) * 1000 if latencies else float("nan"),
        "commits": commits,
        "batch": requests / commits if commits else 0.0,
        "largest": max(a["largestBatch"] for a in after),
        "reconciled": not report["mismatches"],
        "timedOut": done < purchases,
    }


def show(result):
    print(
        "  %-20s %6d answered (%d approved) in %6.2fs: %8.0f purchases/s;"
        " answer p50 %7.2f ms, p99 %7.2f ms, max %7.2f ms; %d commits, %.1f per commit (largest %d)%s%s"
        % (
            result["mode"],
            result["answered"],
            result["approved"],
            result["seconds"],
            result["tps"],
            result["p50"],
            result["p99"],
            result["max"],
            result["commits"],
            result["batch"],
            result["largest"],
            "" if result["reconciled"] else "  ACCOUNTS DO NOT RECONCILE",
            "  (stopped at the time limit)" if result["timedOut"] else "",
        )
    )


@defer.inlineCallbacks
def main(reactor, args):
    directory = tempfile.mkdtemp(prefix="tvlink-ledger-bench-", dir=args.dir)
    try:
        print(
            "tvlink ledger benchmark: %d purchases, %d in flight, limit %gs a mode; Python %s on %s; files in %s"
            % (args.purchases, args.concurrency, args.time_limit, platform.python_version(), platform.platform(), directory)
        )
        results = []
        for groupCommit in (True, False):
            path = os.path.join(directory, "ledger-%s.db" % ("group" if groupCommit else "single",))
            result = yield runMode(reactor, [path], groupCommit, args.purchases, args.concurrency, args.time_limit)
            show(result)
            results.append(result)
        group, single = results
        print(
            "  group commit: %.1fx the purchases per second, p99 answer time %.1fx lower"
            % (
                group["tps"] / single["tps"] if single["tps"] else float("inf"),
                single["p99"] / group["p99"] if group["p99"] else float("inf"),
            )
        )
        if not all(r["reconciled"] and r["approved"] == r["answered"] for r in results):
            print("FAILED: not every purchase was approved, or the accounts do not reconcile")
            raise SystemExit(1)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=5000, help="purchases per mode (default 5000)")
    parser.add_argument("--concurrency", type=int, default=64, help="purchases in flight (default 64)")
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="stop a mode after this many seconds (default 60)"
    )
    parser.add_argument("--dir", default=None, help="where to put the ledger files (default: the temp dir)")
    args = parser.parse_args(argv)
    if args.purchases < 1 or args.concurrency < 1 or args.time_limit <= 0:
        parser.error("--purchases, --concurrency and --time-limit must be positive")
    return args


if __name__ == "__main__":
    arguments = parseArgs()
    task.react(main, (arguments,))
