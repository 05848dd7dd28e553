"""
The C{--http} options of the roles: where the web side listens and the
limits of its front door (L{HTTPOptions}), and on a platform who may call
the terminal API (L{TerminalAPIOptions}); L{buildDoor} turns them, with
the process's descriptor budget, into a L{tvlink.web.frontdoor.FrontDoor}.
"""

import ipaddress
import re

from twisted.logger import Logger
from twisted.python import usage

from tvlink.link.settings import positive
from tvlink.web.frontdoor import DEFAULT_MAX_PER_CLIENT

log = Logger(namespace="tvlink.tap")


def _seconds(name, default, doc):
    return [name, None, str(default), doc + " (seconds, may be fractional)"]


def isLoopback(description):
    """
    Whether the server endpoint C{description} listens on loopback only
    (a C{tcp}/C{ssl} endpoint whose C{interface} is a loopback address,
    or a UNIX socket). An endpoint without an interface listens on all.
    """
    parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    kind = parts[0]
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl", "tls"):
        return False
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if equals and name == "interface":
            try:
                return ipaddress.ip_address(value.strip("[]")).is_loopback
            except ValueError:
                return value == "localhost"
    return False


class HTTPOptions(usage.Options):
    """
    C{--http ENDPOINT} and the limits of the connections it takes.
    """

    optFlags = [["http-access-log", None, "Log every HTTP request (http_event request; default: off)"]]

    optParameters = [
        [
            "http-max-connections",
            None,
            None,
            "HTTP connections open at once, beyond which new ones are closed at once (default: three quarters "
            "of the descriptors the links and stores leave)",
        ],
        ["http-max-per-client", None, str(DEFAULT_MAX_PER_CLIENT), "HTTP connections open at once from one address"],
        _seconds("http-head-timeout", 10, "Time from a request's first byte to the end of its headers"),
        _seconds("http-body-timeout", 10, "Time from the end of a request's headers to the end of its body"),
        _seconds("http-idle-timeout", 30, "Time a keep-alive connection may wait between requests"),
    ]

    def httpOptions(self):
        """
        Check C{--http} and its limits: sets C{http} (the endpoint, or
        C{None}) and C{doorOptions} (keywords of L{FrontDoor}, but for a
        default C{max_connections}, which L{buildDoor} works out).
        """
        value = self["http"]
        self.http = None
        if value is not None:
            from tvlink.web.service import parseHTTPEndpoint

            try:
                self.http = parseHTTPEndpoint(value)
            except ValueError as e:
                raise usage.UsageError("--http: %s" % (e,)) from None
        door = {}
        for option in ("http-max-connections", "http-max-per-client"):
            given = self[option]
            if given is None:
                continue
            if not given.isdigit() or int(given) < 1:
                raise usage.UsageError("--%s must be a whole number of at least 1, not %r" % (option, given))
            door[option[len("http-"):].replace("-", "_")] = int(given)
        for option in ("http-head-timeout", "http-body-timeout", "http-idle-timeout"):
            try:
                door[option[len("http-"):].replace("-", "_")] = positive("--" + option, self[option])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        self.doorOptions = door


class TerminalAPIOptions(usage.Options):
    """
    Who may call a platform's terminal API: C{--api-keys} and
    C{--http-allow-origin}.
    """

    optParameters = [
        [
            "api-keys",
            None,
            None,
            "Key file of the terminals allowed to call the API (made with 'tvlink keys'; read again on SIGHUP), "
            "or 'none' for an open API; required when --http is not on loopback",
        ],
        [
            "api-rate",
            None,
            "0",
            "With --api-keys: calls a second each terminal may make, in bursts of as many (beyond: 429 with "
            "Retry-After); 0: no limit",
        ],
        [
            "api-max-calls",
            None,
            "500",
            "Terminal API calls in progress at once; beyond, a call is answered 503 with Retry-After at once",
        ],
    ]

    def accessInit(self):
        """
        Call from the options' C{__init__}.
        """
        self["http-allow-origin"] = []

    def opt_http_allow_origin(self, origin):
        """
        A browser origin (scheme://host[:port]) allowed to call the API
        cross-origin (repeat for more; default: none)
        """
        if "://" not in origin or origin.endswith("/") or any(c.isspace() for c in origin):
            raise usage.UsageError("--http-allow-origin: give an origin such as https://pay.example.com, not %r" % (origin,))
        self["http-allow-origin"].append(origin)

    def accessOptions(self):
        """
        Check C{--api-keys} against C{--http} (run after L{httpOptions}):
        sets C{apiKeys}, the key file's path or C{None}.

        @raise usage.UsageError: the API would be open off loopback, or
            the key file cannot be read.
        """
        calls = self["api-max-calls"]
        if not calls.isdigit() or int(calls) < 1:
            raise usage.UsageError("--api-max-calls must be a whole number of at least 1, not %r" % (calls,))
        self.apiMaxCalls = int(calls)
        try:
            self.apiRate = float(self["api-rate"])
        except ValueError:
            self.apiRate = -1.0
        if not self.apiRate >= 0 or self.apiRate == float("inf"):
            raise usage.UsageError("--api-rate must be a number of calls a second (0: no limit), not %r" % (self["api-rate"],))
        given = self["api-keys"]
        self.apiKeys = None
        if given is None and self.apiRate:
            raise usage.UsageError("--api-rate limits each terminal: it needs --api-keys FILE")
        if given is None:
            if self.http is not None and not isLoopback(self.http):
                raise usage.UsageError(
                    "--http %s is not on loopback: the terminal API there moves money, so it needs "
                    "--api-keys FILE (made with 'tvlink keys --file FILE add TERMINAL-ID'), or --api-keys none "
                    "to leave it open on purpose" % (self.http,)
                )
            return
        if given == "none":
            if self.apiRate:
                raise usage.UsageError("--api-rate limits each terminal: it needs --api-keys FILE")
            return
        from tvlink.web.keys import KeyFileError, TerminalKeys

        try:
            TerminalKeys(given)
        except KeyFileError as e:
            raise usage.UsageError("--api-keys: %s" % (e,)) from None
        self.apiKeys = given


def buildDoor(options, links):
    """
    The L{tvlink.web.frontdoor.FrontDoor} of C{options} (an
    L{HTTPOptions}), for a process whose links may hold C{links}
    descriptors: the soft descriptor limit is raised to the hard one
    first, and the budget logged.
    """
    from tvlink.descriptors import DescriptorBudget, raiseLimit
    from tvlink.web.frontdoor import FrontDoor

    before, after = raiseLimit()
    budget = DescriptorBudget(after, links)
    keywords = dict(options.doorOptions)
    keywords.setdefault("max_connections", budget.httpConnections())
    door = FrontDoor(**keywords)
    left = budget.limit - budget.reserved
    log.info(
        "descriptor budget {budget} (soft limit {before} raised to {after}); HTTP gets at most {http} "
        "connections, {perClient} per client",
        tap_event="descriptors",
        budget=budget.describe(),
        before=before,
        after=after,
        http=door.max_connections,
        perClient=door.max_per_client,
    )
    if left < 16 or door.max_connections > left:
        log.warn(
            "the descriptor limit {limit} leaves {left} for HTTP after the links and stores: raise it "
            "(ulimit -n) or lower --max-links / --http-max-connections",
            tap_event="descriptors-short",
            limit=budget.limit,
            left=left,
        )
    return door
