"""
Writing JSON answers from twisted.web resources, and noticing clients that
went away.
"""

import weakref

import orjson
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

#: The requests L{watch} follows, each C{True} once its client has gone
#: (kept here, not on the request: it is twisted.web's object).
_watched = weakref.WeakKeyDictionary()

_log = Logger(namespace="tvlink.web")


def watch(request):
    """
    Note when the client of C{request} goes away before the answer is
    written (see L{gone}).
    """
    if request in _watched:
        return
    _watched[request] = False

    def lost(failure):
        _watched[request] = True

    request.notifyFinish().addErrback(lost)


def gone(request):
    """
    Whether C{request} may no longer be written to.
    """
    return _watched.get(request, False) or bool(getattr(request, "finished", False))


def encodeJSON(body):
    """
    C{body} as compact UTF-8 JSON, one line.
    """
    return orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)


#: The answer given when an answer's body could not be written as JSON.
UNWRITABLE = encodeJSON({"error": "error", "message": "the platform could not write this answer; see its log"})


def writeJSON(request, code, body, headers=()):
    """
    Answer C{request} with status C{code} and the JSON of C{body}, unless
    its client has gone.
    """
    if gone(request):
        return
    try:
        data = encodeJSON(body)
    except TypeError:
        # orjson's encode error is a TypeError: a value no JSON can carry
        # (an integer past 64 bits, an object). The client is still
        # answered; the log says what could not be written.
        _log.failure("a {code} answer could not be written as JSON", code=code, web_event="unwritable")
        code, data = 500, UNWRITABLE
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % (len(data),))
    request.setHeader(b"cache-control", b"no-store")
    for name, value in headers:
        request.setHeader(name, value)
    request.write(data)
    request.finish()


class JSONResource(Resource):
    """
    A resource whose errors (unknown child, method not allowed) are JSON
    too. A leaf with C{exact} set answers only its own path: anything
    below it is not found.
    """

    exact = False

    def getChild(self, name, request):
        return NotFound()

    def render(self, request):
        if self.exact and any(request.postpath):
            return NotFound().render(request)
        method = request.method.decode("ascii", "replace").upper()
        handler = getattr(self, "render_" + method, None)
        if handler is None and method == "HEAD":
            handler = getattr(self, "render_GET", None)
        if handler is None:
            allowed = sorted(
                name[len("render_"):] for name in dir(self) if name.startswith("render_") and name != "render_"
            )
            writeJSON(
                request,
                405,
                {"error": "method-not-allowed", "message": "use %s here" % (" or ".join(allowed),)},
                [(b"allow", ", ".join(allowed).encode("ascii"))],
            )
            return NOT_DONE_YET
        return handler(request)


class Refusal(JSONResource):
    """
    A JSON refusal, C{code} with C{error} and C{message}, for any method
    and any path under it.
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


class NotFound(Refusal):
    """
    A JSON 404 for any path under it.
    """

    def __init__(self, message="no such resource"):
        Refusal.__init__(self, 404, "not-found", message)
