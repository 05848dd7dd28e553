"""
The twistd application: C{twistd -n tvlink payment|platform|sandbox ...}.
"""

import os
import signal

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage

from tvlink.cli.codecopts import CodecOptions, EndpointCodecOptions
from tvlink.cli.filesopts import PaymentFilesOptions, PlatformFilesOptions, withFiles
from tvlink.cli.httpopts import HTTPOptions, TerminalAPIOptions, buildDoor
from tvlink.link import wire
from tvlink.link.settings import positive
from tvlink.platform.endpoints import parseGroups
from tvlink.platform.journal import parseJournalOption
from tvlink.platform.pool import BALANCERS
from tvlink.store.postgresql import checkURL, isURL

log = Logger(namespace="tvlink.tap")

#: The platform's journal when --http is given without --journal.
DEFAULT_API_JOURNAL = "tvlink-journal.db"


def _seconds(name, default, doc):
    return [name, None, str(default), doc + " (seconds, may be fractional)"]


class _LinkOptions(CodecOptions):
    """
    Options both roles take.
    """

    #: option name -> keyword of LinkSettings, for the seconds options.
    secondsOptions = {
        "heartbeat": "heartbeat",
        "idle-timeout": "idle_timeout",
        "frame-timeout": "frame_timeout",
    }

    #: option name -> (keyword, smallest value), for the count options.
    countOptions = {
        "max-in-flight": ("max_in_flight", 1),
        "max-handling": ("max_handling", 1),
        "max-batch": ("max_batch", 1),
    }

    optParameters = [
        ["max-in-flight", None, "1000", "Requests in flight on one link, each way (beyond: a local error / 91)"],
        ["max-handling", None, "1000", "Requests being handled at once on all links (beyond: 91)"],
        ["max-batch", None, "12", "Frames a link handles per reactor turn before writing what they produced"],
        _seconds("heartbeat", 60, "Write-idle time before sending an idle-query frame"),
        _seconds("idle-timeout", 180, "Read-idle time after which the link is declared dead"),
        _seconds("frame-timeout", 30, "Time a started frame may take to arrive whole"),
        ["header", None, "ascii4", "Frame header: ascii4, bin2 or bin4"],
        ["max-frame", None, str(wire.DEFAULT_MAX_FRAME), "Largest frame body in bytes"],
        ["echo-interval", None, "0", "Send an echo test on every ready link this often (0: off)"],
    ]

    def postOptions(self):
        self.linkOptions = {}
        for option, keyword in self.secondsOptions.items():
            self.linkOptions[keyword] = self._positive(option)
        echo = self["echo-interval"]
        self.echo_interval = 0.0 if echo in ("0", "0.0") else self._positive("echo-interval")
        if self["header"] not in wire.HEADERS:
            raise usage.UsageError(
                "--header must be one of %s, not %r" % (", ".join(sorted(wire.HEADERS)), self["header"])
            )
        self.linkOptions["header"] = self["header"]
        maxFrame = self["max-frame"]
        if not maxFrame.isdigit() or int(maxFrame) < 1:
            raise usage.UsageError("--max-frame must be a positive number of bytes, not %r" % (maxFrame,))
        self.linkOptions["max_frame"] = int(maxFrame)
        sender = self["sender"]
        if not sender or not sender.isascii() or not sender.isprintable():
            raise usage.UsageError("--sender must be a non-empty printable ASCII id, not %r" % (sender,))
        self.linkOptions["sender"] = sender
        self._codecOptions()
        for option, (keyword, least) in self.countOptions.items():
            value = self[option]
            if not value.isdigit() or int(value) < least:
                raise usage.UsageError(
                    "--%s must be a whole number of at least %d, not %r" % (option, least, value)
                )
            self.linkOptions[keyword] = int(value)

    def _positive(self, option):
        try:
            return positive("--" + option, self[option])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class _TLSOptions(usage.Options):
    """
    The C{--tls-*} options of a role, checked (files readable, parsed, key
    matching certificate) once the role's own options are; the keywords for
    the service end up in C{tlsOptions}.
    """

    #: Whether a certificate is required as soon as any TLS option is given.
    certificateRequired = False

    def parseOptions(self, options=None):
        usage.Options.parseOptions(self, options)
        self.tlsOptions = self._checkTLS()

    def _checkTLS(self):
        from tvlink.link.tls import Identity, TLSConfigError, loadCertificates, loadPrivateKey

        given = {name: self.get(name) for name in ("tls-cert", "tls-key", "tls-ca", "tls-hostname")}
        if not any(value is not None for value in given.values()):
            return {}
        cert, key, ca = given["tls-cert"], given["tls-key"], given["tls-ca"]
        if cert is None and (key is not None or self.certificateRequired):
            raise usage.UsageError("--tls-cert FILE is required with the other --tls-* options")

        def check(option, load, path, *args):
            try:
                return load(path, *args)
            except TLSConfigError as e:
                raise usage.UsageError("--%s: %s" % (option, e)) from None

        if cert is not None:
            check("tls-cert", loadCertificates, cert, "TLS certificate file")
        if key is not None:
            check("tls-key", loadPrivateKey, key, "TLS key file")
        if ca is not None:
            check("tls-ca", loadCertificates, ca, "TLS CA file")
        if cert is not None:
            # The key must be the certificate's (or sit in its file).
            option = "tls-key" if key is not None else "tls-cert"
            check(option, Identity, cert, key, "TLS certificate file", "TLS key file")
        hostname = given["tls-hostname"]
        if hostname is not None and (not hostname.strip() or any(c.isspace() for c in hostname)):
            raise usage.UsageError("--tls-hostname must be a host name, not %r" % (hostname,))
        try:
            timeout = positive("--tls-handshake-timeout", self["tls-handshake-timeout"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        keywords = {"tls_" + name[4:]: value for name, value in given.items() if value is not None}
        keywords["tls_handshake_timeout"] = timeout
        return keywords


class _PaymentTLSOptions(_TLSOptions):
    certificateRequired = True
    optParameters = [
        ["tls-cert", None, None, "Serve TLS with this certificate (PEM; its chain may follow, and its key)"],
        ["tls-key", None, None, "The certificate's private key (PEM, unencrypted)"],
        ["tls-ca", None, None, "Mutual TLS: require a platform certificate signed by a CA in this PEM file"],
        _seconds("tls-handshake-timeout", 10, "Time a TLS handshake may take"),
    ]


class _PlatformTLSOptions(_TLSOptions):
    optParameters = [
        ["tls-cert", None, None, "Link over TLS presenting this client certificate (PEM; chain and key may follow)"],
        ["tls-key", None, None, "The client certificate's private key (PEM, unencrypted)"],
        ["tls-ca", None, None, "Link over TLS, trusting the payment nodes' CA in this PEM file (else the system's)"],
        ["tls-hostname", None, None, "Name the payment node's certificate must carry (default: the --connect host)"],
        _seconds("tls-handshake-timeout", 10, "Time a TLS handshake may take"),
    ]


class PaymentOptions(PaymentFilesOptions, HTTPOptions, _PaymentTLSOptions, _LinkOptions):
    synopsis = "--listen ENDPOINT [options]"
    longdesc = "Run the payment side: listen for platform links."
    optParameters = [
        ["listen", None, None, "Server endpoint to listen on, e.g. tcp:7000:interface=127.0.0.1"],
        ["sender", None, "PAYMENT", "This node's institution id"],
        [
            "ledger",
            None,
            "sqlite:tvlink-ledger.db",
            "Account ledger: sqlite:PATH (durable, created if missing; open accounts with "
            "'tvlink ledger --db PATH open PAN AMOUNT'), postgresql://USER@HOST:PORT/DB (one ledger "
            "several payment nodes share; see 'Scaling out' in the operations guide), or memory "
            "(the demo handler: every card has 1000.00, nothing is kept)",
        ],
        _seconds("backend-timeout", 30, "Time to wait for the account back end before answering 91"),
        ["max-links", None, "1000", "Platform connections accepted at once (beyond: refused)"],
        ["max-links-per-peer", None, "100", "Connections accepted at once from one address"],
        _seconds("sign-on-timeout", 30, "Time a new link has to sign on before it is closed"),
        [
            "http",
            None,
            None,
            "Serve the status page and /metrics on this endpoint, e.g. tcp:8081:interface=127.0.0.1 "
            "(a bare port means 127.0.0.1 only; default: off)",
        ],
    ]

    countOptions = dict(
        _LinkOptions.countOptions,
        **{"max-links": ("max_links", 1), "max-links-per-peer": ("max_links_per_peer", 1)}
    )

    def postOptions(self):
        if not self["listen"]:
            raise usage.UsageError("--listen ENDPOINT is required")
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor

        try:
            serverFromString(MemoryReactor(), self["listen"])
        except (ValueError, TypeError) as e:
            raise usage.UsageError("--listen: %s" % (e,)) from None
        _LinkOptions.postOptions(self)
        from tvlink.payment.service import parseLedgerSpec

        try:
            self.ledger = parseLedgerSpec(self["ledger"])
        except ValueError as e:
            raise usage.UsageError("--ledger: %s" % (e,)) from None
        self.backend_timeout = self._positive("backend-timeout")
        self.linkOptions["sign_on_timeout"] = self._positive("sign-on-timeout")
        self.httpOptions()
        self._filesOptions()


class PlatformOptions(
    PlatformFilesOptions, TerminalAPIOptions, HTTPOptions, EndpointCodecOptions, _PlatformTLSOptions, _LinkOptions
):
    synopsis = "--connect HOST:PORT[,HOST:PORT...] [--connect ...] [options]"
    longdesc = (
        "Run the platform side: keep links to each payment endpoint and spread "
        "requests over them. Endpoints joined by commas in one --connect form a "
        "priority group for --balance primary."
    )
    secondsOptions = dict(
        _LinkOptions.secondsOptions,
        timeout="timeout",
        cooldown="cooldown",
        ramp="ramp",
        **{"terminal-deadline": "terminal_deadline"}
    )
    optParameters = [
        _seconds("timeout", 40, "Time to wait for the payment side's answer"),
        ["sender", None, "PLATFORM", "This node's institution id"],
        ["links-per-endpoint", None, "1", "Links opened to each payment endpoint"],
        ["balance", None, "least-pending", "Strategy: least-pending, round-robin or primary"],
        ["max-queued", None, "1000", "Requests that may wait for a ready link at once"],
        ["eject-after", None, "5", "Timeouts in a row that eject a link for a cool-down"],
        _seconds("cooldown", 30, "Rest of an ejected link before its echo-test probe"),
        _seconds("ramp", 30, "Time over which a recovered link regains its full share"),
        _seconds("terminal-deadline", 60, "The TV terminal's deadline; --timeout must be below it"),
        [
            "journal",
            None,
            None,
            "Journal money-moving requests and reverse those in doubt: sqlite:PATH, or "
            "postgresql://USER@HOST:PORT/DB (one journal several platform processes share)",
        ],
        [
            "journal-owner",
            None,
            None,
            "The name this process holds its journal entries under (default: 'local' on SQLite, "
            "HOST:PID on PostgreSQL; give each process of a shared journal a stable name of its own "
            "to resume its entries at once after a restart)",
        ],
        _seconds(
            "journal-lease",
            15,
            "How long this process's unfinished journal entries stay its own without its renewing "
            "the lease; another process takes them over after that",
        ),
        [
            "card-key",
            None,
            None,
            "Key file (32 random bytes as 64 hex digits, mode 600) under which the journal keeps card "
            "numbers sealed, so that reversals carry the card (default: masked cards only)",
        ],
        [
            "http",
            None,
            None,
            "Serve the terminal API (/v1), the status page and /metrics on this endpoint, e.g. "
            "tcp:8080:interface=127.0.0.1 (a bare port means 127.0.0.1 only; default: off). The API "
            "needs a journal: without --journal it is sqlite:" + "tvlink-journal.db in the run directory",
        ],
    ]

    countOptions = dict(
        _LinkOptions.countOptions,
        **{
            "links-per-endpoint": ("links_per_endpoint", 1),
            "max-queued": ("max_queued", 0),
            "eject-after": ("eject_after", 1),
        }
    )
    def __init__(self):
        _LinkOptions.__init__(self)
        self["connect"] = []
        self.endpointCodecsInit()
        self.accessInit()


    def opt_connect(self, endpoint):
        """
        Payment endpoint HOST:PORT, or several joined by commas as one
        priority group (repeat for more)
        """
        try:
            parseGroups([endpoint])
        except ValueError as e:
            raise usage.UsageError("--connect: %s" % (e,)) from None
        self["connect"].append(endpoint)

    def postOptions(self):
        if not self["connect"]:
            raise usage.UsageError("--connect HOST:PORT is required (at least one)")
        _LinkOptions.postOptions(self)
        if self["balance"] not in BALANCERS:
            raise usage.UsageError(
                "--balance must be one of %s, not %r" % (", ".join(sorted(BALANCERS)), self["balance"])
            )
        self.linkOptions["balance"] = self["balance"]
        self._endpointCodecs()
        self._filesOptions()
        if not self.linkOptions["timeout"] < self.linkOptions["terminal_deadline"]:
            raise usage.UsageError(
                "--timeout (%gs) must be below --terminal-deadline (%gs)"
                % (self.linkOptions["timeout"], self.linkOptions["terminal_deadline"])
            )
        if self["journal"] is not None:
            try:
                path = parseJournalOption(self["journal"])
                if isURL(path):
                    checkURL(path)
            except ValueError as e:
                raise usage.UsageError("--journal: %s" % (e,)) from None
            if isURL(path):
                self.linkOptions["journal"] = path
            else:
                folder = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(folder):
                    raise usage.UsageError("--journal: folder %r does not exist" % (folder,))
                self.linkOptions["journal"] = "sqlite:" + path
        self.linkOptions["journal_lease"] = self._positive("journal-lease")
        if self["journal-owner"] is not None:
            if not self["journal-owner"].strip():
                raise usage.UsageError("--journal-owner must not be empty")
            self.linkOptions["journal_owner"] = self["journal-owner"]
        if self["card-key"] is not None:
            from tvlink.platform.cardvault import CardVault, CardVaultError

            try:
                self.linkOptions["vault"] = CardVault.fromKeyFile(self["card-key"])
            except CardVaultError as e:
                raise usage.UsageError("--card-key: %s" % (e,)) from None
        self.httpOptions()
        self.accessOptions()
        if self.http is not None and "journal" not in self.linkOptions:
            # The terminal API is idempotent by order id, across restarts too:
            # that takes a durable journal.
            self.linkOptions["journal"] = "sqlite:" + DEFAULT_API_JOURNAL
        if "vault" in self.linkOptions and "journal" not in self.linkOptions:
            raise usage.UsageError("--card-key seals the cards of the journal: it needs --journal (or --http)")


class SandboxOptions(HTTPOptions, _LinkOptions):
    synopsis = "[options]"
    longdesc = (
        "Run both roles in one process, linked over loopback TCP, on a SQLite ledger "
        "with demo accounts, with the terminal API and both status pages; make one "
        "demo purchase and print the curl command that makes another."
    )
    optParameters = [
        ["port", None, "0", "Loopback port the payment side listens on (0: any free port)"],
        ["sender", None, "PLATFORM", "The platform's institution id"],
        [
            "http",
            None,
            "tcp:8080:interface=127.0.0.1",
            "Where the terminal API and both status pages are served (the payment side's under /payment/)",
        ],
    ]

    def postOptions(self):
        _LinkOptions.postOptions(self)
        self.httpOptions()
        if self.http is not None:
            from tvlink.cli.httpopts import isLoopback

            if not isLoopback(self.http):
                raise usage.UsageError(
                    "--http: the sandbox's terminal API is open and moves money: serve it on loopback "
                    "(tcp:PORT:interface=127.0.0.1), not %s" % (self.http,)
                )
        if not self["port"].isdigit() or int(self["port"]) > 65535:
            raise usage.UsageError("--port must be 0-65535, not %r" % (self["port"],))


class Options(usage.Options):
    synopsis = "payment|platform|sandbox [options]"
    longdesc = "tvlink: the JR/T 0109.4 link between a TV platform and a payment system."
    subCommands = [
        ["payment", None, PaymentOptions, "Run the payment side (server)"],
        ["platform", None, PlatformOptions, "Run the platform side (client)"],
        ["sandbox", None, SandboxOptions, "Run both sides linked on loopback"],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("name a role: payment, platform or sandbox")


def makeService(config, reactor=None):
    """
    Build the service twistd runs from parsed L{Options}: the role's
    service, and with C{--http} its web side in front of it.
    """
    role = _makeRoleService(config, reactor)
    service = withFiles(config, role, _withWeb(config, role))
    _exitZeroAfterStop(reactor)
    _settleGarbageCollection(reactor)
    return service


def _exitZeroAfterStop(reactor=None):
    """
    twistd's reactor answers C{SIGTERM} and C{SIGINT} by stopping and, once
    stopped, twistd kills itself with the same signal again (exit status
    128+N). A tvlink node stops on either by draining (no new work,
    in-flight requests finish, sign-off, close), and a stop that has run
    its course is a success: once the reactor runs, tvlink's own handlers
    take those two signals over and stop the reactor the same way, so the
    process exits 0 after a clean shutdown.
    """
    if reactor is None:
        from tvlink.link.settings import globalReactor

        reactor = globalReactor()

    def stop():
        try:
            reactor.stop()
        except ReactorNotRunning:
            # A second signal while the first stop drains.
            pass

    def received(number, frame):
        log.info("stopping on signal {signal}; a clean shutdown exits 0", signal=number)
        reactor.callFromThread(stop)

    def install():
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, received)

    reactor.callWhenRunning(install)


def _settleGarbageCollection(reactor=None):
    """
    Once the reactor runs, move everything made at start-up (modules,
    classes, the services) out of the garbage collector's sight
    (L{gc.freeze}), so that its full collections scan only what requests
    leave behind; and collect the young generation less often (every
    10,000 allocations instead of 700). A request's objects that form
    cycles (twisted.web's request and channel do) are still collected;
    the full scans that followed every few hundred requests cost a sixth
    of the platform's time at 256 connections.
    """
    import gc

    if reactor is None:
        from tvlink.link.settings import globalReactor

        reactor = globalReactor()

    def settle():
        gc.collect()
        gc.freeze()
        gc.set_threshold(10000, 10, 10)

    reactor.callWhenRunning(settle)


def _withWeb(config, service):
    """
    C{service} alone, or with C{--http} a L{tvlink.web.ServiceStack} of
    C{service} and its web side, which stops first (no new work comes in
    while the service drains).
    """
    http = getattr(config.subOptions, "http", None)
    if http is None or config.subCommand == "sandbox":
        return service
    from tvlink.web import HTTPService, ServiceStack, paymentResource, platformResource

    sub = config.subOptions
    if config.subCommand == "platform":
        from tvlink.web.access import Access, Origins, RateLimit
        from tvlink.web.terminal import TerminalAPI

        keys = rate = None
        if sub.apiKeys is not None:
            from tvlink.web.keys import TerminalKeys

            keys = TerminalKeys(sub.apiKeys)
            _reloadOnHangUp(keys, service.reactor)
            if sub.apiRate:
                rate = RateLimit(sub.apiRate, service.reactor)
        access = Access(keys, Origins(sub["http-allow-origin"]), rate)
        api = TerminalAPI(service, access=access, max_calls=sub.apiMaxCalls)
        resource, api = platformResource(service, api=api)
        links = 2 * len(service.factories)
        web = HTTPService(
            http, resource, reactor=service.reactor, api=api, grace=service.terminal_deadline,
            what="terminal API at /v1 (%s), status page, metrics" % ("keys required" if keys else "open",),
            door=buildDoor(sub, links), access_log=sub["http-access-log"],
        )
        if sub["journal"] is None:
            log.info(
                "the terminal API journals to {path} (the default with --http; choose with --journal)",
                path=os.path.abspath(DEFAULT_API_JOURNAL),
            )
    else:
        web = HTTPService(
            http, paymentResource(service), reactor=service.reactor, door=buildDoor(sub, _paymentDescriptors(sub, service)),
            access_log=sub["http-access-log"],
        )
    stack = ServiceStack()
    stack.role, stack.service, stack.web = service.role, service, web
    service.setServiceParent(stack)
    web.setServiceParent(stack)
    return stack


def _paymentDescriptors(sub, service):
    """
    The descriptors a payment node keeps before its HTTP side has any: one
    per platform link it may accept, and with C{--files-listen} up to four
    per transfer slot (the most connections the file service holds open).
    """
    from tvlink.files.server import FileServerFactory

    files = getattr(sub, "filesOptions", None) or {}
    return service.factory.max_links + FileServerFactory.connectionsPerTransfer * files.get("max_transfers", 0)


def _reloadOnHangUp(keys, reactor):
    """
    Read the API key file C{keys} again whenever the process gets
    C{SIGHUP} (a revoked key stops working at once).
    """

    def received(number, frame):
        reactor.callFromThread(keys.reload)

    reactor.callWhenRunning(signal.signal, signal.SIGHUP, received)


def _makeRoleService(config, reactor=None):
    """
    The role's own service.
    """
    from tvlink.masking import installMasking

    # Every log event of the run, whatever observer twistd or anyone adds
    # later, passes through the card-number filter.
    installMasking()
    sub = config.subOptions
    options = dict(sub.linkOptions, echo_interval=sub.echo_interval)
    options.update(getattr(sub, "tlsOptions", {}))
    if reactor is not None:
        options["reactor"] = reactor
    if config.subCommand == "payment":
        kind, path = sub.ledger
        if kind in ("sqlite", "postgresql"):
            from tvlink.payment.ledger import PaymentLedger
            from tvlink.payment.service import LedgerPaymentService

            return LedgerPaymentService(
                sub["listen"],
                PaymentLedger(path, reactor=reactor),
                backend_timeout=sub.backend_timeout,
                **options
            )
        from tvlink.payment.service import PaymentService

        return PaymentService(sub["listen"], **options)
    if config.subCommand == "platform":
        from tvlink.platform.service import PlatformService

        return PlatformService(sub["connect"], **options)
    from tvlink.cli.sandbox import SandboxService

    door = buildDoor(sub, 4) if sub.http is not None else None
    return SandboxService(
        port=int(sub["port"]), http=sub.http, door=door, access_log=sub["http-access-log"], **options
    )
