"""
Serving the web side: L{HTTPService} serves a resource tree on a server
endpoint and stops gracefully; L{ServiceStack} stops its children one
after the other; L{SandboxWeb} is the sandbox's one site.
"""

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.server import Site

from tvlink.link.settings import globalReactor
from tvlink.web.frontdoor import FrontDoor, GuardedChannel, GuardedConnections, GuardedRequest
from tvlink.web.metrics import HTTPCollector
from tvlink.web.terminal import TerminalAPI
from tvlink.web.tree import platformResource, sandboxResource


def parseHTTPEndpoint(value):
    """
    The server endpoint description for C{--http}: a description such as
    C{tcp:8080:interface=127.0.0.1}, or a bare port number, which means
    that port on 127.0.0.1 only.

    @raise ValueError: naming what is wrong.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("give a server endpoint such as tcp:8080:interface=127.0.0.1")
    value = value.strip()
    if value.isdigit():
        if int(value) > 65535:
            raise ValueError("port %s is not 0-65535" % (value,))
        return "tcp:%d:interface=127.0.0.1" % (int(value),)
    try:
        serverFromString(None, value)
    except Exception as e:
        raise ValueError("%r is not a server endpoint (%s)" % (value, e)) from None
    return value


class _Site(Site):
    """
    A L{Site} that shows no tracebacks, holds its connections to a
    L{FrontDoor} (L{GuardedChannel}, L{GuardedRequest}) and, with
    C{accessLog} set, logs each request as a structured event (not a line
    in the combined log format). The access log is off by default: it
    cost a quarter of the platform's time per call, and the journal and
    the metrics already account for every call.
    """

    displayTracebacks = False
    noisy = False
    protocol = GuardedChannel
    requestFactory = GuardedRequest
    access = Logger(namespace="tvlink.web.access")
    accessLog = False

    def log(self, request):
        if not self.accessLog:
            return
        address = request.getClientAddress()
        self.access.info(
            "{client} {method} {path} {code} {length}",
            http_event="request",
            client=getattr(address, "host", "-"),
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace")[:200],
            code=request.code,
            length=request.sentLength,
        )


class HTTPService(Service):
    """
    Serves C{resource} on the server endpoint C{description}.

    The port is opened in L{privilegedStartService}, so a port in use stops
    C{twistd} at once with the reason. L{stopService} closes the port
    first, waits (up to C{grace} seconds) for the terminal API calls in
    progress to be answered, then closes every connection once its
    answers are written.

    @param api: the L{TerminalAPI} whose calls to wait for, if any.
    @param what: words for the log line naming what is served.
    @param door: the L{FrontDoor} every connection is held to (connection
        caps, deadlines, body size); by default one with the default
        limits.
    @param access_log: log every request (C{http_event} C{request}).
    """

    log = Logger(namespace="tvlink.web")

    def __init__(
        self,
        description,
        resource,
        reactor=None,
        api=None,
        grace=60.0,
        what="status page, metrics",
        door=None,
        access_log=False,
    ):
        self.reactor = reactor if reactor is not None else globalReactor()
        self.description = description
        self.resource = resource
        self.api = api
        self.grace = float(grace)
        self.what = what
        self.door = door if door is not None else FrontDoor()
        self.site = _Site(resource, timeout=self.door.idle_timeout, reactor=self.reactor)
        self.site.accessLog = bool(access_log)
        self.factory = GuardedConnections(self.site, self.door, self.reactor)
        registry = getattr(resource, "registry", None)
        if registry is not None:
            # The resource tree's metrics (platformResource, paymentResource)
            # gain those of its front door.
            registry.register(HTTPCollector(self.factory))
        self.endpoint = serverFromString(self.reactor, description)
        self.port = None
        self._listenCalled = False

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        if self._listenCalled:
            return
        self._listenCalled = True
        failures = []
        self.endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:
            self._listenCalled = False
            self.log.error(
                "cannot serve HTTP on {description}: {why} (choose another endpoint with --http)",
                web_event="listen-failed",
                description=self.description,
                why=failures[0].getErrorMessage(),
            )
            # Raised before the reactor runs: twistd exits non-zero.
            failures[0].raiseException()

    def _listening(self, port):
        self.port = port
        door = self.door
        self.log.info(
            "web listening on {url} ({what}); at most {connections} connections, {perClient} per client, "
            "head within {head:g}s, body within {body:g}s, idle {idle:g}s",
            web_event="listening",
            url=self.url(),
            what=self.what,
            connections=door.max_connections,
            perClient=door.max_per_client,
            head=door.head_timeout,
            body=door.body_timeout,
            idle=door.idle_timeout,
        )

    def startService(self):
        if not self._listenCalled:
            self.privilegedStartService()
        if self.api is not None:
            self.api.stopping = False
        Service.startService(self)

    def address(self):
        """
        C{(host, port)} listened on, or C{None}.
        """
        if self.port is None:
            return None
        host = self.port.getHost()
        return getattr(host, "host", None), getattr(host, "port", None)

    def url(self):
        """
        The base URL (C{http://HOST:PORT/}, C{https://} on a TLS
        endpoint), or C{None} before listening.
        """
        address = self.address()
        if address is None or address[1] is None:
            return None
        host = address[0]
        if host in ("0.0.0.0", "", None):
            host = "127.0.0.1"
        elif ":" in host:
            host = "[%s]" % (host,)
        scheme = "https" if self.description.split(":", 1)[0] in ("ssl", "tls") else "http"
        return "%s://%s:%d/" % (scheme, host, address[1])

    def stopService(self):
        Service.stopService(self)
        self._listenCalled = False
        if self.api is not None:
            self.api.stopping = True
        port, self.port = self.port, None
        d = port.stopListening() if port is not None else None
        d = d if isinstance(d, Deferred) else succeed(None)
        if port is not None:
            d.addCallback(
                lambda _: self.log.info(
                    "web stopped listening on {description}", web_event="stopped", description=self.description
                )
            )
        if self.api is not None:
            d.addCallback(lambda _: self._bounded(self.api.whenIdle(), self.grace))
        d.addCallback(lambda _: self._closeConnections())
        return d

    def _bounded(self, d, seconds):
        """
        C{d}, fired with C{None} after C{seconds} if it has not fired.
        """
        out = Deferred()

        def expire():
            if not out.called:
                d.cancel()
                out.callback(None)

        call = self.reactor.callLater(seconds, expire)

        def fired(result):
            if call.active():
                call.cancel()
            if not out.called:
                out.callback(None)

        d.addBoth(fired)
        return out

    def _closeConnections(self, seconds=5.0):
        """
        Close every HTTP connection once what was written to it is sent;
        abort those still open after C{seconds}.
        """
        factory = self.factory
        for protocol in list(factory.protocols):
            protocol.transport.loseConnection()
        d = self._bounded(factory.whenEmpty(), seconds)

        def abortStragglers(_):
            for protocol in list(factory.protocols):
                protocol.transport.abortConnection()

        return d.addCallback(abortStragglers)


class ServiceStack(MultiService):
    """
    A L{MultiService} whose children start in order and stop one after
    the other in reverse order, each once the one after it has stopped.
    With the web side added last, it stops first: no new work comes in
    while the service behind it drains.
    """

    def stopService(self):
        Service.stopService(self)
        services = list(self)
        services.reverse()
        d = succeed(None)
        for service in services:
            d.addCallback(lambda _, s=service: s.stopService())
        return d


class SandboxWeb(HTTPService):
    """
    The sandbox's one site: the platform's terminal API and status page at
    C{/}, the payment side's under C{/payment/}. The platform is attached
    once it exists (L{attachPlatform}); until then C{/} says it is
    starting.
    """

    def __init__(
        self, description, payment, reactor=None, link_wait=None, demo_card=None, door=None, access_log=False
    ):
        self.payment = payment
        #: The card the printed curl command pays with.
        self.demo_card = demo_card
        self.platform = None
        self.api = TerminalAPI(lambda: self.platform, clock=reactor, link_wait=link_wait)
        self.root = sandboxResource(payment, self.api, lambda: self.platform)
        HTTPService.__init__(
            self, description, self.root, reactor=reactor or payment.reactor, api=self.api,
            what="terminal API at /v1, platform status at /, payment status at /payment/", door=door,
            access_log=access_log,
        )

    def attachPlatform(self, platform):
        """
        Serve C{platform}: its terminal API under C{/v1} and its status at
        C{/}.
        """
        self.platform = platform
        tree, _ = platformResource(platform, api=self.api, links=[("payment/", "payment side")])
        for name, child in tree.children.items():
            self.root.putChild(name, child)

    def announce(self, out=None):
        """
        Log where the site is, and print the curl command that makes a
        payment. The command goes straight to standard output, not through
        the log, whose filter would mask its (demo) card number.
        """
        self.log.info(
            "sandbox web on {url}: terminal API at {url}v1/, platform status at {url}, "
            "payment status at {url}payment/; the curl command that makes a payment follows",
            web_event="sandbox-ready",
            url=self.url(),
        )
        if out is None:
            import sys

            out = sys.__stdout__
        if out is not None:
            out.write("\nMake a payment:\n\n    %s\n\n" % (self.paymentCommand(),))
            out.flush()

    def paymentCommand(self, order="demo-1", card=None, amount=1234):
        """
        The curl command that makes a payment through this site.
        """
        url = self.url() or "http://127.0.0.1:8080/"
        return (
            "curl -s -X POST %sv1/payments -H 'Content-Type: application/json' "
            "-d '{\"card\": \"%s\", \"amount\": %d, \"order\": \"%s\"}'" % (url, card or self.demo_card, amount, order)
        )
