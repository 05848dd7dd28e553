"""
What the file service's tests share: a server protocol on a
StringTransport and a Clock, frame splitting, and content to send.
"""

import hashlib
import json
import os
import shutil
import tempfile

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from tvlink.files.names import FileStore
from tvlink.files.server import FileServerFactory
from tvlink.link.settings import LinkSettings


def inline(f, *args):
    """
    Run C{f(*args)} at once: the thread pool's stand-in under a Clock (an
    exception fails the L{Deferred}, as on the pool).
    """
    return maybeDeferred(f, *args)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def frame(message):
    body = message if isinstance(message, bytes) else json.dumps(message).encode("utf-8")
    return b"%04d" % (len(body),) + body


def frames(data):
    """
    The ascii4 frame bodies of C{data} (it must end on a frame boundary).
    """
    bodies = []
    while data:
        length = int(data[:4])
        bodies.append(data[4 : 4 + length])
        data = data[4 + length :]
    return bodies


def messages(data):
    """
    The JSON messages among the frame bodies of C{data} (data frames of
    random bytes left out, even one that happens to begin with C{{}).
    """
    found = []
    for body in frames(data):
        try:
            found.append(json.loads(body))
        except ValueError:
            continue
    return found


class HeldJobs:
    """
    A stand-in for the thread pool that runs nothing until told:
    C{runInThread(f, *args)} keeps C{(deferred, f, args)} in C{jobs}.
    """

    def __init__(self):
        self.jobs = []

    def runInThread(self, f, *args):
        d = Deferred()
        self.jobs.append((d, f, args))
        return d


def recordSyncs(case):
    """
    Record, for the rest of the test, the inode of every descriptor
    C{os.fsync} is called on (and still sync it); the list they go to.
    """
    real, synced = os.fsync, []

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        return real(fd)

    case.patch(os, "fsync", fsync)
    return synced


def tempRoot(case):
    """
    A fresh files root, removed in cleanup.
    """
    root = tempfile.mkdtemp(prefix="tvlink-files-")
    case.addCleanup(shutil.rmtree, root, True)
    return root


def putFile(root, sender, name, data):
    folder = os.path.join(root, sender)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    return os.path.join(folder, name)


class Events:
    """
    The log events with a C{files_event} field during a test.
    """

    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def named(self, name):
        return [e for e in self.events if e.get("files_event") == name]


class ServerRig:
    """
    A file server factory on a Clock with connections on StringTransports.
    """

    def __init__(self, case, **limits):
        self.clock = Clock()
        self.root = tempRoot(case)
        self.settings = LinkSettings(reactor=self.clock)
        limits.setdefault("idle", 5.0)
        limits.setdefault("total", 20.0)
        self.factory = FileServerFactory(FileStore(self.root), self.settings, runInThread=inline, **limits)
        self.port = 40000

    def connect(self):
        self.port += 1
        address = IPv4Address("TCP", "127.0.0.1", self.port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def pump(self, transport):
        """
        Let a registered pull producer write until it is done.
        """
        while transport.producer is not None:
            transport.producer.resumeProducing()
