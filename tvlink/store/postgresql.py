"""
PostgreSQL under tvlink's stores: the connection (psycopg 3, through a
psycopg-pool pool that reconnects), the one place where its SQL differs
from SQLite's, its versioned schema, and L{PostgreSQLStore}, the
L{tvlink.store.writer.WriterStore} the platform's journal runs on when
given C{postgresql://...}. The payment ledger's PostgreSQL statements are
in L{tvlink.store.ledgerpostgresql.PostgreSQLLedgerStore}, next to SQLite's.

Why blocking psycopg on a thread, not psycopg's asyncio API bridged to
Twisted: the stores already run every transaction on a writer thread
(group commit needs one writer that gathers what arrives during a
commit); the same code serves SQLite, whose driver has no asynchronous
API; and an asyncio loop inside Twisted means running the asyncio
reactor (or a second loop in a thread), which would change the reactor
every other part of tvlink and its tests run on. A thread per store costs
one connection per process and nothing on the reactor thread.
"""

import re
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
from psycopg_pool import ConnectionPool

from tvlink.store.writer import WriterStore

#: The URL schemes that name a PostgreSQL database.
SCHEMES = ("postgresql://", "postgres://")


class DatabaseUnavailable(Exception):
    """
    The database cannot be reached or opened; the message names its URL
    with the password masked.
    """


def isURL(value):
    """
    Whether C{value} names a PostgreSQL database (C{postgresql://...}).
    """
    return isinstance(value, str) and value.startswith(SCHEMES)


def maskURL(url):
    """
    C{url} with its password (if any) as C{***}, for messages and logs.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc="%s:***@%s" % (user, host)))


def checkURL(url):
    """
    C{url} if it is a usable PostgreSQL URL (a database name after the
    host), else C{ValueError} saying what is wrong.
    """
    if not isURL(url):
        raise ValueError("expected postgresql://USER@HOST:PORT/DB, not %r" % (maskURL(str(url)),))
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise ValueError("%s: the port is not a number" % (maskURL(url),)) from None
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("%s: no host (postgresql://USER@HOST:PORT/DB)" % (maskURL(url),))
    if not unquote(parts.path.lstrip("/")):
        raise ValueError("%s: no database name after the host (postgresql://USER@HOST:PORT/DB)" % (maskURL(url),))
    return url


# -- where the SQL differs -----------------------------------------------

#: The statement that begins a writer's transaction: every statement sees
#: what was committed before it began; rows to be changed are read with
#: C{FOR UPDATE} and wait for any other writer's lock on them.
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"

_TYPES = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),)

_placeholders = {}


def placeholders(sql):
    """
    C{sql} written with C{?} placeholders (as every statement in tvlink
    is) in psycopg's C{%s} style.
    """
    translated = _placeholders.get(sql)
    if translated is None:
        translated = _placeholders[sql] = sql.replace("%", "%%").replace("?", "%s")
    return translated


def ddl(statement):
    """
    A C{CREATE} statement written for SQLite, in PostgreSQL's types
    (C{REAL} is a double there, not a 4-byte float).
    """
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def columnsOf(conn, table):
    """
    The names of the columns of C{table}, on C{conn}.
    """
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ?",
        (table,),
    ).fetchall()
    return {row[0] for row in rows}


def isLost(conn):
    """
    Whether the psycopg connection C{conn} is gone (closed, or broken by
    a lost server).
    """
    return conn.closed or conn.broken


#: A deadlock between two nodes' transactions, or a serialization
#: failure: the transaction was rolled back and may be run again.
RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class Connection:
    """
    A psycopg connection (autocommit: transactions are begun explicitly)
    that takes statements with C{?} placeholders, as SQLite's does.

    @ivar raw: the psycopg connection.
    """

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql, params=()):
        return self.raw.execute(placeholders(sql), tuple(params))


# -- connecting and the schema ---------------------------------------------


#: libpq settings a store's connections get unless the URL sets them: a
#: bounded connect, and TCP keepalives that notice a database host gone
#: silent within about half a minute rather than the system's two hours.
CONNECTION_DEFAULTS = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3"}


def connectionOptions(url, timeout):
    """
    The keyword arguments of every connection to C{url}: autocommit (the
    stores begin their transactions explicitly), a connect timeout of
    C{timeout} seconds, and L{CONNECTION_DEFAULTS}, each unless the URL
    gives its own.
    """
    given = psycopg.conninfo.conninfo_to_dict(url)
    options = {"autocommit": True}
    defaults = dict(CONNECTION_DEFAULTS, connect_timeout=str(max(1, int(timeout))))
    options.update({name: value for name, value in defaults.items() if name not in given})
    return options


def openPool(url, timeout=10.0, size=1):
    """
    A psycopg-pool pool of C{size} connections to C{url}, open, with one
    connection made.

    @raise DatabaseUnavailable: naming the URL (password masked) and why.
    """
    url = checkURL(url)
    options = connectionOptions(url, timeout)
    try:
        # One direct attempt first: its error says why (refused, no such
        # database, bad password); the pool's own says only "timeout".
        psycopg.connect(url, **options).close()
        pool = ConnectionPool(
            url,
            min_size=size,
            max_size=size,
            kwargs=options,
            open=False,
            timeout=timeout,
            name="tvlink",
        )
        pool.open(wait=True, timeout=timeout)
    except psycopg.Error as e:
        raise DatabaseUnavailable(
            "cannot connect to the database %s: %s" % (maskURL(url), " ".join(str(e).split()) or type(e).__name__)
        ) from None
    return pool


#: Where each component's schema version is kept.
_VERSIONS = "CREATE TABLE IF NOT EXISTS tvlink_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"


def schemaVersion(conn, component):
    """
    The schema version of C{component} (C{"ledger"}, C{"journal"}) in the
    database, or 0 when it has none.
    """
    present = conn.execute("SELECT to_regclass('tvlink_schema')").fetchone()[0]
    if present is None:
        return 0
    row = conn.execute("SELECT version FROM tvlink_schema WHERE component = ?", (component,)).fetchone()
    return 0 if row is None else row[0]


def ensureSchema(conn, component, version, schema, migrate=None, where="database"):
    """
    Create or bring up to date the schema of C{component}, in one
    transaction under an advisory lock (so that two processes starting at
    once do not both create it), and record C{version}.

    @param schema: C{CREATE ... IF NOT EXISTS} statements, in SQLite's
        types (L{ddl} translates them).
    @param migrate: C{migrate(conn)} run after them, inside the
        transaction; what it returns is returned.
    @raise DatabaseUnavailable: if the database holds a newer version.
    """
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('tvlink_schema'))")
        found = schemaVersion(conn, component)
        if found > version:
            raise DatabaseUnavailable(
                "the %s of %s has schema version %d; this tvlink knows %d" % (component, where, found, version)
            )
        conn.execute(_VERSIONS)
        for statement in schema:
            conn.execute(ddl(statement))
        migrated = migrate(conn) if migrate is not None else None
        conn.execute(
            "INSERT INTO tvlink_schema (component, version) VALUES (?, ?)"
            " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, version),
        )
    except BaseException:
        if not isLost(conn.raw):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return migrated


class PostgreSQLStore(WriterStore):
    """
    One PostgreSQL database, one writer (see L{WriterStore}): the same
    work functions as on SQLite, their C{?} placeholders translated.

    @param url: C{postgresql://USER[:PASSWORD]@HOST:PORT/DB}; C{path}
        (for messages) is it with the password masked.
    @param component: the name its schema version is kept under.
    @param version: the schema version this code writes.
    @raise DatabaseUnavailable: if the database cannot be reached, or
        holds a newer schema.
    """

    BEGIN = BEGIN
    Error = psycopg.Error
    dialect = "postgresql"

    def __init__(
        self,
        url,
        schema=(),
        reactor=None,
        group_commit=True,
        threaded=True,
        migrate=None,
        component="store",
        version=1,
        connect_timeout=10.0,
    ):
        WriterStore.__init__(self, maskURL(url), reactor=reactor, group_commit=group_commit, threaded=threaded)
        self.connect_timeout = connect_timeout
        self.pool = openPool(url, connect_timeout)
        self.conn = Connection(self.pool.getconn())
        try:
            self.migrated = ensureSchema(self.conn, component, version, schema, migrate, where=self.path)
        except BaseException:
            self.closeConnection()
            raise
        self.start()

    columnsOf = staticmethod(columnsOf)

    def lost(self, error):
        return self.conn is None or isLost(self.conn.raw)

    def retryable(self, error):
        return isinstance(error, RETRYABLE)

    def reconnect(self):
        if self.conn is not None:
            self.pool.putconn(self.conn.raw)
            self.conn = None
        self.conn = Connection(self.pool.getconn(timeout=self.connect_timeout))

    def closeConnection(self):
        if self.conn is not None:
            self.pool.putconn(self.conn.raw)
            self.conn = None
        self.pool.close()
