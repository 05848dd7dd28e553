#!/usr/bin/env python
"""
Durable purchases per second on each ledger store, in one run: SQLite, and
PostgreSQL with one payment node and with two on the same database, each
with group commit and with one commit per purchase; against two floors,
a bare single-row C{INSERT} committed one at a time on each database (what
one commit per purchase can at best reach).

Each mode gets a fresh ledger (a SQLite file; a PostgreSQL database) with
one account per submitter, and a L{tvlink.payment.backend.LedgerHandler} in
front of each node's L{tvlink.payment.ledger.PaymentLedger}, as on a
payment node. Two nodes are two ledgers (two writer threads, two
connections) in this process, the submitters shared out between them.
C{--concurrency} submitters each keep one purchase in flight until
C{--purchases} have been answered or C{--time-limit} seconds have passed.
An answer is counted once its commit is durable, which is when the ledger
delivers it.

PostgreSQL is the server at C{--postgresql URL} (the benchmark creates and
drops a database per mode on it), or, by default, a throw-away cluster of
its own started with the tests' helper (C{initdb} in a temporary folder,
127.0.0.1, stopped at exit; the server programs must be installed). Run it
on the disk the databases will live on.

    python bench/store_bench.py [--purchases 3000] [--concurrency 64]
"""

import argparse
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from bench.ledger_bench import runMode  # noqa: E402


def sqliteFloor(path, rows, timeLimit):
    """
    Single-row INSERTs, each its own durable commit (WAL, FULL), on one
    connection: rows per second.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE floor (n INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    return _floor(lambda n: conn.execute("INSERT INTO floor VALUES (?, ?)", (n, "x" * 200)), conn.close, rows, timeLimit)


def postgresqlFloor(url, rows, timeLimit):
    """
    The same on PostgreSQL, autocommit: every INSERT a durable commit.
    """
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    conn.execute("CREATE TABLE floor (n BIGINT PRIMARY KEY, body TEXT NOT NULL)")
    return _floor(
        lambda n: conn.execute("INSERT INTO floor VALUES (%s, %s)", (n, "x" * 200)), conn.close, rows, timeLimit
    )


def _floor(insert, close, rows, timeLimit):
    started = time.perf_counter()
    done = 0
    while done < rows and time.perf_counter() - started < timeLimit:
        done += 1
        insert(done)
    elapsed = time.perf_counter() - started
    close()
    return done / elapsed if elapsed else 0.0


def show(result, sqlite, floor):
    print(
        "  %-42s %6d answered in %6.2fs: %7.0f purchases/s (%5.2fx SQLite group commit, %5.2fx its floor);"
        " p50 %6.2f ms, p99 %7.2f ms; %.1f per commit%s%s"
        % (
            result["mode"], result["answered"], result["seconds"], result["tps"],
            result["tps"] / sqlite if sqlite else float("nan"), result["tps"] / floor if floor else float("nan"),
            result["p50"], result["p99"], result["batch"],
            "" if result["reconciled"] and result["approved"] == result["answered"] else "  NOT ALL APPROVED OR RECONCILED",
            "  (stopped at the time limit)" if result["timedOut"] else "",
        )
    )


@defer.inlineCallbacks
def main(reactor, args):
    directory = tempfile.mkdtemp(prefix="tvlink-store-bench-", dir=args.dir)
    try:
        newDatabase, where = yield deferToThread(postgresqlServer, args.postgresql)
        print(
            "tvlink store benchmark: %d purchases, %d in flight, limit %gs a mode; Python %s on %s; %d CPUs;"
            " SQLite files in %s; PostgreSQL %s"
            % (
                args.purchases, args.concurrency, args.time_limit, platform.python_version(), platform.platform(),
                os.cpu_count(), directory, where,
            )
        )
        floors = {
            "SQLite": sqliteFloor(os.path.join(directory, "floor.db"), args.floor_rows, args.time_limit),
            "PostgreSQL": postgresqlFloor((yield deferToThread(newDatabase)), args.floor_rows, args.time_limit),
        }
        for name, rate in sorted(floors.items()):
            print("  floor: bare single-row INSERT, one durable commit each, on %-10s %7.0f rows/s" % (name, rate))
        results = []
        sqliteRate = None
        for groupCommit in (True, False):
            for name, count, database in (("SQLite", 1, "sqlite"), ("PostgreSQL, 1 node", 1, "pg"), ("PostgreSQL, 2 nodes", 2, "pg")):
                if database == "sqlite":
                    wheres = [os.path.join(directory, "ledger-%d.db" % (len(results),))]
                else:
                    wheres = [(yield deferToThread(newDatabase))] * count
                result = yield runMode(
                    reactor, wheres, groupCommit, args.purchases, args.concurrency, args.time_limit, name=name
                )
                if sqliteRate is None:
                    sqliteRate = result["tps"]
                show(result, sqliteRate, floors["SQLite" if database == "sqlite" else "PostgreSQL"])
                results.append(result)
        if not all(r["reconciled"] and r["approved"] == r["answered"] for r in results):
            print("FAILED: not every purchase was approved, or the accounts do not reconcile")
            raise SystemExit(1)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def postgresqlServer(url):
    """
    C{(newDatabase, description)}: a way to make a fresh database on the
    server at C{url}, or on a cluster of the benchmark's own.
    """
    if url is None:
        from tests import pgcluster

        cluster = pgcluster.cluster()
        return cluster.newDatabase, "(own cluster on 127.0.0.1:%d)" % (cluster.port,)
    import psycopg

    from tvlink.store.postgresql import maskURL

    count = [0]

    def newDatabase():
        count[0] += 1
        name = "tvlink_bench_%d_%d" % (os.getpid(), count[0])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE %s" % (name,))
        base, _, _ = url.rpartition("/")
        return "%s/%s" % (base, name)

    return newDatabase, maskURL(url)


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=3000, help="purchases per mode (default 3000)")
    parser.add_argument("--concurrency", type=int, default=64, help="purchases in flight (default 64)")
    parser.add_argument("--floor-rows", type=int, default=1000, help="rows of each floor (default 1000)")
    parser.add_argument(
        "--time-limit", type=float, default=30.0, help="stop a mode after this many seconds (default 30)"
    )
    parser.add_argument("--dir", default=None, help="where to put the SQLite files (default: the temp dir)")
    parser.add_argument(
        "--postgresql",
        default=None,
        metavar="URL",
        help="a server where the benchmark may create databases (default: start one of its own)",
    )
    args = parser.parse_args(argv)
    if min(args.purchases, args.concurrency, args.floor_rows) < 1 or args.time_limit <= 0:
        parser.error("--purchases, --concurrency, --floor-rows and --time-limit must be positive")
    return args


if __name__ == "__main__":
    arguments = parseArgs()
    task.react(main, (arguments,))
