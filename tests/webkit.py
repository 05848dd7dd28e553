"""
Helpers for tests of the web side over real HTTP on 127.0.0.1: a client
call, free ports, and an in-test platform with its terminal API.
"""

import io
import json
import os
import shutil
import socket
import tempfile

from twisted.internet import defer
from twisted.internet.protocol import Protocol

from tests.processes import (
    getReactor,
    withDeadline,
)
from tvlink.platform.service import PlatformService
from tvlink.web import (
    HTTPService,
    ServiceStack,
    platformResource,
)

PAN = "6222020000000000018"


def tempdir(testCase):
    """
    A temporary directory removed after the test (not C{mktemp}: under
    pytest that litters the checkout).
    """
    path = tempfile.mkdtemp(prefix="tvlink-web-")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


#: Payment children's timers, matching the in-test platform's: each side
#: hears the other at least every half second.
FAST = ("--heartbeat", "0.5", "--idle-timeout", "5")


@defer.inlineCallbacks
def fetch(method, url, body=None, seconds=20.0):
    """
    One HTTP request with twisted.web's L{Agent}, on a connection of its
    own. Fires with C{(code, body)}, the body parsed if it is JSON.
    """
    from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
    from twisted.web.http_headers import Headers

    reactor = getReactor()
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    producer = None
    if body is not None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        producer = FileBodyProducer(io.BytesIO(raw))
    headers = Headers({b"content-type": [b"application/json"]})
    what = "%s %s" % (method, url)
    response = yield withDeadline(agent.request(method.encode("ascii"), url.encode("ascii"), headers, producer), seconds, what)
    raw = yield withDeadline(readResponseBody(response), seconds, what + " (body)")
    kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
    if kind.startswith(b"application/json"):
        return response.code, json.loads(raw.decode("utf-8"))
    return response.code, raw.decode("utf-8")


def readResponseBody(response):
    """
    A L{Deferred} of the whole body of C{response}.
    """
    from twisted.internet.protocol import Protocol
    from twisted.web.client import PotentialDataLoss, ResponseDone

    d = defer.Deferred()
    parts = []

    class Collect(Protocol):
        def dataReceived(self, data):
            parts.append(data)

        def connectionLost(self, reason):
            if reason.check(ResponseDone, PotentialDataLoss):
                d.callback(b"".join(parts))
            else:
                d.errback(reason)

    response.deliverBody(Collect())
    return d


def freePort():
    """
    A loopback port nothing listens on (bound, then released).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PlatformWeb:
    """
    An in-test platform (with a journal) and its web side on 127.0.0.1.
    """

    @defer.inlineCallbacks
    def platformWeb(self, port, link_wait=0.5, ready=True, **options):
        options.setdefault("heartbeat", 0.5)
        options.setdefault("idle_timeout", 5)
        options.setdefault("timeout", 2)
        journal = os.path.join(tempdir(self), "journal.db")
        service = PlatformService(["127.0.0.1:%d" % (port,)], connect_timeout=5, journal="sqlite:" + journal, **options)
        resource, api = platformResource(service, link_wait=link_wait)
        web = HTTPService("tcp:0:interface=127.0.0.1", resource, api=api, grace=10)
        stack = ServiceStack()
        service.setServiceParent(stack)
        web.setServiceParent(stack)
        stack.startService()
        self.addCleanup(stack.stopService)
        if ready:
            yield withDeadline(service.whenReady(), 10, "the in-test platform to sign on")
        return service, web.url()

    @defer.inlineCallbacks
    def balance(self, url, card=PAN):
        code, body = yield fetch("POST", url + "v1/balance", {"card": card})
        self.assertEqual((code, body["state"]), (200, "approved"), body)
        return body["balance"]



class _Collect(Protocol):
    """
    Writes C{data} once connected, keeps all that comes back, and fires
    C{done} with it when the connection closes.
    """

    def __init__(self, data):
        self.data = data
        self.parts = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.parts.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.parts))


def parseResponse(raw):
    """
    C{(status, headers, body)} of the HTTP response C{raw}: the headers a
    C{dict} of lower-case names, the body parsed if it is JSON.
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if headers.get("content-type", "").startswith("application/json"):
        body = json.loads(body.decode("utf-8"))
    return status, headers, body


@defer.inlineCallbacks
def rawRequest(port, data, seconds=10.0, host="127.0.0.1"):
    """
    Send the bytes C{data} on a new connection to C{host}:C{port} and
    read until the server closes (send C{Connection: close}).

    @return: a L{Deferred} of L{parseResponse}'s C{(status, headers,
        body)}, or of C{None} when nothing came back.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    protocol = _Collect(data)
    endpoint = TCP4ClientEndpoint(getReactor(), host, port, timeout=seconds)
    yield withDeadline(connectProtocol(endpoint, protocol), seconds, "connecting to %s:%d" % (host, port))
    raw = yield withDeadline(protocol.done, seconds, "the answer to %r" % (data[:60],))
    return parseResponse(raw) if raw else None


def httpRequest(method, path, body=b"", headers=(), contentType=b"application/json"):
    """
    The bytes of one HTTP/1.1 request that asks the server to close after
    answering.
    """
    lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: 127.0.0.1", b"Connection: close"]
    if contentType is not None:
        lines.append(b"Content-Type: " + contentType)
    if body or method in (b"POST", b"PUT", b"PATCH"):
        lines.append(b"Content-Length: %d" % (len(body),))
    lines.extend(headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
