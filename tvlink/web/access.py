"""
Who may call the terminal API: L{Access} checks a request's terminal key
(L{tvlink.web.keys.TerminalKeys}), holds each terminal to a rate
(L{RateLimit}) and, for browsers, checks its origin (cross-origin
requests are refused unless the operator names the origins allowed).
"""

import math

from twisted.web.server import NOT_DONE_YET

from tvlink.web.responses import Refusal, writeJSON

UNAUTHORIZED = Refusal(
    401,
    "unauthorized",
    "this API needs a terminal key: send Authorization: Bearer KEY (keys are made with 'tvlink keys add')",
    [(b"www-authenticate", b'Bearer realm="tvlink"')],
)


class Origins:
    """
    The browser origins allowed to call the API (none by default): a
    request from one of them is answered with
    C{Access-Control-Allow-Origin}, and its preflight granted; any other
    preflight is refused C{403}. Requests without an C{Origin} header
    (terminals) are not concerned.
    """

    def __init__(self, allowed=()):
        self.allowed = frozenset(o.encode("ascii") if isinstance(o, str) else o for o in allowed)

    def headersFor(self, request):
        """
        The CORS headers of the answer to C{request}: none unless its
        origin is allowed.
        """
        if not self.allowed:
            return []
        origin = request.getHeader(b"origin")
        if origin is None or origin not in self.allowed:
            return []
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    def preflight(self, request):
        """
        Answer the C{OPTIONS} C{request}: C{204} with what may be sent for
        an allowed origin, else C{403}.
        """
        headers = self.headersFor(request)
        if not headers:
            writeJSON(
                request,
                403,
                {
                    "error": "forbidden",
                    "message": "cross-origin calls are not allowed here (an operator may allow an origin "
                    "with --http-allow-origin)",
                },
            )
            return NOT_DONE_YET
        request.setResponseCode(204)
        for name, value in headers + [
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", b"Authorization, Content-Type"),
            (b"access-control-max-age", b"600"),
        ]:
            request.setHeader(name, value)
        return b""


class RateLimit:
    """
    At most C{rate} calls a second from each terminal, in bursts of up to
    C{rate} (a token bucket per terminal, on C{clock}).
    """

    def __init__(self, rate, clock):
        self.rate = float(rate)
        if self.rate <= 0:
            raise ValueError("a rate limit must be above zero, not %r" % (rate,))
        self.clock = clock
        #: C{{terminal: (tokens, when counted)}}.
        self.buckets = {}

    def wait(self, terminal):
        """
        Take a call for C{terminal}: C{0} if it may go now, else the
        seconds until it may.
        """
        now = self.clock.seconds()
        tokens, then = self.buckets.get(terminal, (self.rate, now))
        tokens = min(self.rate, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self.buckets[terminal] = (tokens - 1.0, now)
            return 0.0
        self.buckets[terminal] = (tokens, now)
        return (1.0 - tokens) / self.rate


class Access:
    """
    The terminal API's gate: L{authenticate} names the terminal a request
    authenticated as.

    @param keys: a L{tvlink.web.keys.TerminalKeys}, or C{None} for an open
        API (every request acts for no terminal in particular).
    @param origins: the L{Origins} allowed.
    @param rate: a L{RateLimit} each terminal is held to, or C{None}.
    """

    def __init__(self, keys=None, origins=None, rate=None):
        self.keys = keys
        self.origins = origins if origins is not None else Origins()
        self.rate = rate

    def authenticate(self, request):
        """
        C{(refusal, terminal)}: C{refusal} a resource answering C{401} when
        the request carries no valid key (C{429} when its terminal is over
        its rate), else C{None} and the terminal's id (C{None} on an open
        API).
        """
        if self.keys is None:
            return None, None
        terminal = self.keys.terminalFor(request.getHeader(b"authorization"))
        if terminal is None:
            return UNAUTHORIZED, None
        if self.rate is not None:
            wait = self.rate.wait(terminal)
            if wait > 0:
                return Refusal(
                    429,
                    "rate-limited",
                    "terminal %s is over its %g calls a second; try again in %.1fs" % (terminal, self.rate.rate, wait),
                    [(b"retry-after", b"%d" % (max(1, math.ceil(wait)),))],
                ), None
        return None, terminal
