"""
L{FileService}: the file service of the payment role as an C{IService},
listening on a server endpoint (over TLS when the role has it).
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tvlink.files.names import FileStore
from tvlink.files.server import FileServerFactory
from tvlink.link.settings import LinkSettings, globalReactor


class FileService(Service):
    """
    The file service: listen on a server endpoint description, serve the
    files under C{directory}, over TLS when C{tls} (a
    L{tvlink.link.tls.ServerTLS}) is given.

    @param settings: the L{LinkSettings} whose framing the files port
        uses (C{header}, C{max_frame}) and whose reactor it runs on.
    """

    log = Logger(namespace="tvlink.files")

    def __init__(self, listen, directory, settings=None, tls=None, reactor=None, **limits):
        if settings is None:
            settings = LinkSettings(reactor=reactor if reactor is not None else globalReactor())
        self.reactor = settings.reactor
        self.listen = listen
        self.store = FileStore(directory)
        self.factory = FileServerFactory(self.store, settings, **limits)
        self.endpoint = serverFromString(self.reactor, listen)
        if tls is not None:
            self.endpoint = tls.wrapEndpoint(self.endpoint)
            self.factory.tls = True
        self.tls = tls
        self.port = None
        self.sweep = None
        self._listenCalled = False
        self._waiters = []

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self._listenCalled = True
        failures = []
        self.endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()

    #: Seconds between two sweeps of expired partial files, at most.
    sweepInterval = 3600.0

    def startService(self):
        if not self._listenCalled:
            self.privilegedStartService()
        Service.startService(self)
        self.sweep = LoopingCall(self.expireParts)
        self.sweep.clock = self.reactor
        self.sweep.start(min(self.sweepInterval, self.factory.part_lifetime), now=True)

    def expireParts(self):
        """
        One sweep of the partial files past their lifetime
        (L{FileServerFactory.expireParts}); a failure is logged and the
        sweeps go on.
        """
        d = self.factory.expireParts()
        d.addErrback(lambda f: self.log.failure("files: partial files not swept", f))
        return d

    def _listening(self, port):
        self.port = port
        self.log.info(
            "files: serving {directory} on {address}{tls}",
            files_event="listening",
            directory=self.store.root,
            address=self.address(),
            tls=" over TLS" if self.tls is not None else "",
        )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)

    def address(self):
        if self.port is None:
            return None
        host = self.port.getHost()
        return "%s:%d" % (host.host, host.port)

    def whenListening(self):
        if self.port is not None:
            return succeed(self.port)
        d = Deferred()
        self._waiters.append(d)
        return d

    def stopService(self):
        Service.stopService(self)
        self._listenCalled = False
        sweep, self.sweep = self.sweep, None
        if sweep is not None and sweep.running:
            sweep.stop()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
