"""
SHA-256 of the files the file service sends and receives, computed off
the reactor thread and read in pieces, so a file of any size costs flat
memory; and the server's cache of the digests of the files it serves.
"""

import hashlib
import os

from twisted.internet.defer import succeed

#: Bytes read from disk at once when hashing a file.
READ_SIZE = 1024 * 1024


def hashOpenFile(fd, length):
    """
    A C{hashlib.sha256} of the first C{length} bytes of the open file
    C{fd}, read with C{pread} (the file's own position is left alone).

    @raise ValueError: if the file is shorter.
    """
    digest = hashlib.sha256()
    offset = 0
    while offset < length:
        piece = os.pread(fd, min(READ_SIZE, length - offset), offset)
        if not piece:
            raise ValueError("the file is shorter than %d bytes" % (length,))
        digest.update(piece)
        offset += len(piece)
    return digest


def _hashCopy(fd, length):
    """
    L{hashOpenFile} of the descriptor C{fd}, closed after.
    """
    try:
        return hashOpenFile(fd, length)
    finally:
        os.close(fd)


def hashPrefix(path, length):
    """
    A C{hashlib.sha256} of the first C{length} bytes of the file at
    C{path} (what an earlier try of a transfer brought).
    """
    with open(path, "rb") as f:
        return hashOpenFile(f.fileno(), length)


def inThreadPool(reactor):
    """
    A function running C{f(*args)} on C{reactor}'s thread pool and
    returning a L{Deferred} of its result.
    """
    from twisted.internet.threads import deferToThreadPool

    return lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


class DigestCache:
    """
    The SHA-256 of served files, remembered while a file is unchanged (the
    same device, inode, size and modification time).

    @param runInThread: runs the hashing (C{runInThread(f, *args)}, a
        L{Deferred}).
    """

    #: Digests kept before the cache starts again.
    size = 1000

    def __init__(self, runInThread):
        self.runInThread = runInThread
        self._digests = {}

    def digestOf(self, f, length):
        """
        A L{Deferred} of the SHA-256 (hex) of the first C{length} bytes of
        the open file C{f}.
        """
        info = os.fstat(f.fileno())
        stamp = (info.st_dev, info.st_ino, length, info.st_mtime_ns)
        cached = self._digests.get(stamp)
        if cached is not None:
            return succeed(cached)
        # The hashing reads a descriptor of its own: the connection may close
        # C{f} meanwhile, and its number go to another file.
        d = self.runInThread(_hashCopy, os.dup(f.fileno()), length)

        def remember(digest):
            if len(self._digests) >= self.size:
                self._digests.clear()
            self._digests[stamp] = digest.hexdigest()
            return self._digests[stamp]

        return d.addCallback(remember)
