"""
A throw-away PostgreSQL server for the tests (and the benchmark).

L{cluster} starts one per process the first time a test asks for it:
C{initdb} in a temporary directory, the server on a free port of
127.0.0.1 with its socket in that directory (as the C{postgres} user when
run as root: the server refuses to run as root), and registers an
C{atexit} hook that stops it (C{pg_ctl stop -m immediate}) and removes the
directory. Each test takes a database of its own (L{Cluster.newDatabase}).
It works the same under trial and under pytest, neither of which needs to
know about it.

Without PostgreSQL's server programs the tests that need it are skipped
with the reason; when the environment variable C{CI} is set, or
C{TVLINK_REQUIRE_POSTGRES=1}, a missing server is an error instead (a skip
there would hide the tests).
"""

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import unittest

#: Whether a missing server fails the tests rather than skipping them.
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("TVLINK_REQUIRE_POSTGRES") == "1"

_lock = threading.Lock()
_cluster = None
_failure = None


def serverBinaries():
    """
    The directory holding C{initdb}, C{pg_ctl} and C{postgres}, or C{None}.
    """
    candidates = []
    try:
        candidates.append(
            subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    for directory in candidates:
        if all(os.access(os.path.join(directory, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """
    One running server.

    @ivar port: its TCP port on 127.0.0.1.
    @ivar directory: its temporary directory (data, socket, log).
    """

    def __init__(self, bindir):
        self.bindir = bindir
        self.directory = tempfile.mkdtemp(prefix="tvlink-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "server.log")
        self.port = _freePort()
        self.count = 0
        self.asUser = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chmod(self.directory, 0o700)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self.asUser = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv):
        result = subprocess.run(self.asUser + list(argv), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (argv[0], result.returncode, result.stdout, result.stderr))

    def start(self):
        self._run(
            os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-instructions",
        )
        self.options = "-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s -c max_connections=60" % (
            self.port,
            self.directory,
        )
        self.startServer()
        atexit.register(self.stop)

    def stop(self):
        """
        Stop the server at once and remove its directory.
        """
        if os.path.isdir(self.data):
            subprocess.run(
                self.asUser + [os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    def stopServer(self):
        """
        Stop the server (fast: connections are cut), keeping its data.
        """
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    def startServer(self):
        """
        Start a server L{stopServer} stopped, on the same port.
        """
        self._run(
            os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", self.log, "-o", self.options, "-w", "start"
        )

    def url(self, database="postgres"):
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.port, database)

    def newDatabase(self):
        """
        Create an empty database of its own for a test; its URL.
        """
        import psycopg

        with _lock:
            self.count += 1
            name = "tvlink_%d_%d" % (os.getpid(), self.count)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE %s" % (name,))
        return self.url(name)


def cluster():
    """
    The process's running cluster, started on first use.

    @raise unittest.SkipTest: if there is no PostgreSQL server to run (and
        it is not required).
    @raise RuntimeError: if it is required and missing, or would not start.
    """
    global _cluster, _failure
    with _lock:
        if _cluster is not None:
            return _cluster
        if _failure is not None:
            raise RuntimeError(_failure)
        bindir = serverBinaries()
        if bindir is None:
            why = "no PostgreSQL server programs (initdb, pg_ctl: Debian's postgresql package)"
            if REQUIRED:
                _failure = why + ", and CI or TVLINK_REQUIRE_POSTGRES=1 requires them"
                raise RuntimeError(_failure)
            raise unittest.SkipTest(why)
        try:
            import psycopg

            del psycopg
        except ImportError:
            why = "psycopg is not installed"
            if REQUIRED:
                raise RuntimeError(why)
            raise unittest.SkipTest(why)
        started = Cluster(bindir)
        try:
            started.start()
        except Exception as e:
            started.stop()
            _failure = "PostgreSQL would not start: %s" % (e,)
            raise RuntimeError(_failure) from None
        _cluster = started
        return _cluster


def newDatabase():
    """
    The URL of a fresh database on the process's cluster (see L{cluster}).
    """
    return cluster().newDatabase()
