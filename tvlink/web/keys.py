"""
The terminals' API keys.

A key names its terminal and carries a secret of 32 random bytes:
C{tvk_TERMINAL-ID:SECRET}, the secret in 43 characters of URL-safe
base64. It is shown once, when it is made; the key file keeps only the
SHA-256 digest of the secret, one terminal a line::

    # tvlink terminal API keys: TERMINAL-ID sha256:DIGEST CREATED
    tv-0001 sha256:1f0c...e9 2026-12-04T19:02:11Z

A terminal sends its key as C{Authorization: Bearer KEY}. The platform
finds the terminal's line by the id (which is not secret) and compares the
digest of the secret sent with the one kept, with L{hmac.compare_digest}:
in constant time. A digest is a fair way to keep a secret of 256 random
bits: nobody can guess one, so the slow, salted hashes made for passwords
people choose would only slow every request down.

L{KeyFile} is the file (C{tvlink keys} uses it); L{TerminalKeys} is what
the platform checks requests against, read again on C{SIGHUP}.
"""

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time

from twisted.logger import Logger

#: What a terminal id may be made of.
TERMINAL_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

KEY_PREFIX = "tvk_"

HEADER = "# tvlink terminal API keys: TERMINAL-ID sha256:DIGEST CREATED (the keys themselves are not kept)\n"


class KeyFileError(Exception):
    """
    A key file that cannot be read or written, or a request of it that
    cannot be carried out (the message says which).
    """


def checkTerminalId(terminal):
    """
    @raise KeyFileError: unless C{terminal} is 1 to 64 letters, digits,
        dots, dashes or underscores, beginning with a letter or digit.
    """
    if not isinstance(terminal, str) or not TERMINAL_ID.match(terminal):
        raise KeyFileError(
            "a terminal id is 1 to 64 letters, digits, '.', '-' or '_', beginning with a letter or digit: %r"
            % (terminal,)
        )
    return terminal


def digestOf(secret):
    """
    The SHA-256 digest (hex) of the secret C{secret} (a C{str}).
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def newKey(terminal):
    """
    A new key for C{terminal}: C{(key, digest of its secret)}.
    """
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    return "%s%s:%s" % (KEY_PREFIX, terminal, secret), digestOf(secret)


def splitKey(key):
    """
    C{(terminal, secret)} of the key C{key}, or C{None} if it is not the
    shape of a key.
    """
    if not key.startswith(KEY_PREFIX):
        return None
    terminal, colon, secret = key[len(KEY_PREFIX):].rpartition(":")
    if not colon or not terminal or not secret:
        return None
    return terminal, secret


class KeyFile:
    """
    The key file at C{path}: C{{terminal: (digest, created)}} in
    L{entries}, read by L{read}, written whole (to a new file renamed into
    place, mode 600) by L{write}.
    """

    def __init__(self, path):
        self.path = path
        self.entries = {}

    @classmethod
    def load(cls, path, missing_ok=False):
        """
        The key file at C{path}, read.

        @param missing_ok: a missing file is an empty one (for C{add}).
        @raise KeyFileError: it cannot be read, or a line is malformed.
        """
        keys = cls(path)
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            if missing_ok:
                return keys
            raise KeyFileError("no key file at %s (make one with 'tvlink keys --file %s add TERMINAL-ID')" % (path, path))
        except (OSError, UnicodeDecodeError) as e:
            raise KeyFileError("cannot read the key file %s: %s" % (path, e)) from None
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 3 or not parts[1].startswith("sha256:") or len(parts[1]) != 7 + 64:
                raise KeyFileError("%s line %d: expected 'TERMINAL-ID sha256:DIGEST CREATED'" % (path, number))
            terminal, digest, created = parts
            try:
                checkTerminalId(terminal)
                int(digest[7:], 16)
            except (KeyFileError, ValueError) as e:
                raise KeyFileError("%s line %d: %s" % (path, number, e)) from None
            if terminal in keys.entries:
                raise KeyFileError("%s line %d: terminal %s appears twice" % (path, number, terminal))
            keys.entries[terminal] = (digest[7:].lower(), created)
        return keys

    def add(self, terminal, now=None):
        """
        Make a key for C{terminal}; keep its digest. Returns the key,
        which is not kept anywhere: show it once.

        @raise KeyFileError: the terminal has a key already.
        """
        checkTerminalId(terminal)
        if terminal in self.entries:
            raise KeyFileError("terminal %s has a key already: revoke it first to make a new one" % (terminal,))
        key, digest = newKey(terminal)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        self.entries[terminal] = (digest, created)
        return key

    def revoke(self, terminal):
        """
        @raise KeyFileError: the terminal has no key.
        """
        if terminal not in self.entries:
            raise KeyFileError("terminal %s has no key in %s" % (terminal, self.path))
        del self.entries[terminal]

    def write(self):
        """
        Write the file anew: to a temporary file beside it, mode 600,
        renamed into place.
        """
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, temporary = tempfile.mkstemp(prefix=".tvlink-keys-", dir=folder)
        except OSError as e:
            raise KeyFileError("cannot write the key file %s: %s" % (self.path, e)) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(HEADER)
                for terminal in sorted(self.entries):
                    digest, created = self.entries[terminal]
                    f.write("%s sha256:%s %s\n" % (terminal, digest, created))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except OSError as e:
            os.unlink(temporary)
            raise KeyFileError("cannot write the key file %s: %s" % (self.path, e)) from None


class TerminalKeys:
    """
    The keys the platform accepts, from the key file at C{path}.

    @raise KeyFileError: when the file cannot be read at first.
    """

    log = Logger(namespace="tvlink.web")

    def __init__(self, path):
        self.path = path
        #: C{{terminal: digest of its secret}}.
        self.digests = {}
        self.reload(first=True)

    def reload(self, first=False):
        """
        Read the key file again. A file that cannot be read keeps the keys
        as they were (and logs why); the first read raises instead.

        @return: whether the keys were replaced.
        """
        try:
            keys = KeyFile.load(self.path)
        except KeyFileError as e:
            if first:
                raise
            self.log.error(
                "could not read the API key file again ({why}); the {count} keys read before stay",
                web_event="keys-unread",
                why=str(e),
                count=len(self.digests),
            )
            return False
        self.digests = {terminal: digest for terminal, (digest, _) in keys.entries.items()}
        self.log.info(
            "{count} terminal API keys read from {path}", web_event="keys-read", count=len(self.digests), path=self.path
        )
        return True

    def terminalFor(self, authorization):
        """
        The terminal whose key the C{Authorization} header value
        C{authorization} (bytes, or C{None}) carries, or C{None}.
        """
        if not authorization:
            return None
        scheme, _, key = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not key:
            return None
        try:
            parts = splitKey(key.strip().decode("ascii"))
        except UnicodeDecodeError:
            return None
        if parts is None:
            return None
        terminal, secret = parts
        kept = self.digests.get(terminal)
        if kept is None:
            return None
        return terminal if hmac.compare_digest(kept, digestOf(secret)) else None

    def __len__(self):
        return len(self.digests)
