"""
Who may call the terminal API: L{Access} checks a request's terminal key
(L{tvlink.web.keys.TerminalKeys}) and, for browsers, its origin
(cross-origin requests are refused unless the operator names the origins
allowed).
"""

from twisted.web.server import NOT_DONE_YET

from tvlink.web.responses import JSONResource, writeJSON


class Refusal(JSONResource):
    """
    A JSON refusal, C{code} with C{error} and C{message}, for any method.
    """

    isLeaf = True

    def __init__(self, code, error, message, headers=()):
        JSONResource.__init__(self)
        self.code = code
        self.error = error
        self.message = message
        self.headers = list(headers)

    def render(self, request):
        writeJSON(request, self.code, {"error": self.error, "message": self.message}, self.headers)
        return NOT_DONE_YET


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


class Access:
    """
    The terminal API's gate: L{terminalFor} names the terminal a request
    authenticated as.

    @param keys: a L{tvlink.web.keys.TerminalKeys}, or C{None} for an open
        API (every request acts for no terminal in particular).
    @param origins: the L{Origins} allowed.
    """

    def __init__(self, keys=None, origins=None):
        self.keys = keys
        self.origins = origins if origins is not None else Origins()

    def authenticate(self, request):
        """
        C{(refusal, terminal)}: C{refusal} a resource answering C{401} when
        the request carries no valid key, else C{None} and the terminal's
        id (C{None} on an open API).
        """
        if self.keys is None:
            return None, None
        terminal = self.keys.terminalFor(request.getHeader(b"authorization"))
        if terminal is None:
            return UNAUTHORIZED, None
        return None, terminal
