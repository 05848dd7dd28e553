"""
The web side's front door: what every HTTP connection is held to before
any resource sees it.

    - L{FrontDoor}: the limits (connections in all and per client address,
      the head, body and keep-alive deadlines, the largest body).
    - L{GuardedChannel}: an L{HTTPChannel} whose request head must arrive
      within C{head_timeout} of its first byte and whose body within
      C{body_timeout} of its head, however slowly it drips (Twisted's own
      idle timeout is reset by every byte); between requests a connection
      may stay idle C{idle_timeout}.
    - L{GuardedRequest}: a L{Request} that never parses form bodies (only
      JSON moves money; a form or multipart body is the resource's to
      refuse) and refuses a body over C{max_body} as soon as it is known
      to be too long, without buffering it.
    - L{GuardedConnections}: the wrapping factory that admits a connection
      only within the caps, and closes it at once otherwise, so that HTTP
      clients never take the descriptors that the links need.

Refusals at this level are answered with a JSON object, like every other
refusal of the API, written straight to the connection, which then closes.
"""

import io

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from tvlink.link.limits import ConnectionCaps, LimitLog
from tvlink.link.settings import positive
from tvlink.web.responses import encodeJSON
from tvlink.web.validation import MAX_BODY

#: Connections one client address may hold open by default.
DEFAULT_MAX_PER_CLIENT = 128


class FrontDoor:
    """
    The limits of one HTTP endpoint.

    @param max_connections: connections open at once (beyond: closed at
        once); by default what the process's descriptor budget leaves (see
        L{tvlink.descriptors}).
    @param max_per_client: connections open at once from one address.
    @param head_timeout: seconds from the first byte of a request to the
        end of its head (request line and headers).
    @param body_timeout: seconds from the end of the head to the end of
        the body.
    @param idle_timeout: seconds a connection may wait, between requests,
        before it is closed.
    @param max_body: the largest request body, in bytes.
    """

    def __init__(
        self,
        max_connections=None,
        max_per_client=DEFAULT_MAX_PER_CLIENT,
        head_timeout=10.0,
        body_timeout=10.0,
        idle_timeout=30.0,
        max_body=MAX_BODY,
    ):
        if max_connections is None:
            from tvlink.descriptors import DescriptorBudget

            max_connections = DescriptorBudget.measure().httpConnections()
        self.max_connections = int(max_connections)
        self.max_per_client = min(int(max_per_client), self.max_connections)
        if self.max_connections < 1 or self.max_per_client < 1:
            raise ValueError("the HTTP connection caps must be at least 1")
        self.head_timeout = positive("head_timeout", head_timeout)
        self.body_timeout = positive("body_timeout", body_timeout)
        self.idle_timeout = positive("idle_timeout", idle_timeout)
        self.max_body = int(max_body)


def refuseOnWire(channel, code, phrase, error, message):
    """
    Answer on C{channel} with status C{code} and a JSON error object,
    written straight to its transport (no request is being answered), and
    close it.
    """
    body = encodeJSON({"error": error, "message": message})
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\ncache-control: no-store\r\n\r\n" % (code, phrase, len(body))
    )
    channel.transport.write(head + body)
    channel.loseConnection()


def _peer(channel):
    address = channel.transport.getPeer()
    return "%s:%s" % (getattr(address, "host", "?"), getattr(address, "port", ""))


class GuardedChannel(HTTPChannel):
    """
    An L{HTTPChannel} held to its L{FrontDoor}'s deadlines. C{door} and
    C{limits} (a L{LimitLog}) are set by L{GuardedConnections}.
    """

    door = None
    limits = None
    headDue = None
    bodyDue = None
    #: Between the end of a request's body and its answer: the deadlines
    #: are the API's then, not the connection's.
    busy = False
    #: The connection's local address, looked up once.
    localAddress = None

    def getHost(self):
        # Every request asks (twisted.web's Request notes it); the local
        # address of an accepted connection never changes, so the system
        # is asked once.
        if self.localAddress is None:
            self.localAddress = HTTPChannel.getHost(self)
        return self.localAddress

    def dataReceived(self, data):
        if data and self.headDue is None and self.bodyDue is None and not self.busy:
            self.headDue = self.callLater(self.door.head_timeout, self.tooSlow)
        HTTPChannel.dataReceived(self, data)

    def allHeadersReceived(self):
        due, self.headDue = self.headDue, None
        if self.length != 0:
            # A body follows (of a length given, or chunked): the head's
            # timer, moved on, is the body's.
            if due is not None and due.active():
                due.reset(self.door.body_timeout)
            else:
                due = self.callLater(self.door.body_timeout, self.tooSlow)
            self.bodyDue = due
        else:
            _cancelled(due)
        HTTPChannel.allHeadersReceived(self)

    def allContentReceived(self):
        self.bodyDue = _cancelled(self.bodyDue)
        self.busy = True
        HTTPChannel.allContentReceived(self)

    def requestDone(self, request):
        self.busy = False
        HTTPChannel.requestDone(self, request)

    def connectionLost(self, reason):
        self.headDue = _cancelled(self.headDue)
        self.bodyDue = _cancelled(self.bodyDue)
        HTTPChannel.connectionLost(self, reason)

    def tooSlow(self):
        """
        The request's head or body (whichever was awaited) did not arrive
        in time: answer C{408} and close.
        """
        if self.bodyDue is not None:
            part, seconds = "body", self.door.body_timeout
        else:
            part, seconds = "head", self.door.head_timeout
        self.headDue = self.bodyDue = None
        self.limits.hit("http-%s-timeout" % (part,), _peer(self), "a request whose %s took over %gs" % (part, seconds))
        refuseOnWire(
            self, 408, b"Request Timeout", "timeout",
            "the request %s did not arrive within %gs; the connection is closed" % (part, seconds),
        )

    def refuseBody(self, length):
        """
        The body is over the limit: answer C{413} and close.
        """
        self.bodyDue = _cancelled(self.bodyDue)
        limit = self.door.max_body
        self.limits.hit("http-max-body", _peer(self), "a body of %s bytes" % (length,))
        refuseOnWire(self, 413, b"Payload Too Large", "too-large", "the body is over %d bytes" % (limit,))


def _cancelled(call):
    if call is not None and call.active():
        call.cancel()
    return None


class GuardedRequest(Request):
    """
    A L{Request} that leaves form bodies alone and keeps no body over the
    channel's limit.
    """

    refused = False
    received = 0

    def __init__(self, channel, *args, **kwargs):
        kwargs["parsePOSTFormSubmission"] = False
        Request.__init__(self, channel, *args, **kwargs)

    def gotLength(self, length):
        limit = self.channel.door.max_body
        if length is not None and length > limit:
            self.refused = True
            self.content = io.BytesIO()
            self.channel.refuseBody(length)
            return
        Request.gotLength(self, length)

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.received += len(data)
        if self.received > self.channel.door.max_body:
            self.refused = True
            self.content = io.BytesIO()
            self.channel.refuseBody("over %d" % (self.channel.door.max_body,))
            return
        Request.handleContentChunk(self, data)


class _Admitted(ProtocolWrapper):
    """
    A connection L{GuardedConnections} admitted, with the client host it
    was counted under.
    """

    clientHost = None


class GuardedConnections(WrappingFactory):
    """
    Keeps track of the open HTTP connections of a site, and admits a new
    one only within its L{FrontDoor}'s caps; beyond them the connection is
    closed as soon as it is accepted, and the refusal counted in
    C{limits.hits}.
    """

    noisy = False
    protocol = _Admitted
    log = Logger(namespace="tvlink.web")

    def __init__(self, site, door, clock):
        WrappingFactory.__init__(self, site)
        self.door = door
        self.caps = ConnectionCaps(
            door.max_connections, door.max_per_client, ("http-max-connections", "http-max-per-client")
        )
        self.limits = LimitLog(clock, log=self.log, event="web_event")
        self._emptyWaiters = []

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        refused = self.caps.admit(host)
        if refused is not None:
            self.limits.hit(refused, "%s:%s" % (host, getattr(addr, "port", "")), "an HTTP connection")
            return None
        protocol = WrappingFactory.buildProtocol(self, addr)
        if protocol is None:
            self.caps.release(host)
            return None
        channel = protocol.wrappedProtocol
        channel.door = self.door
        channel.limits = self.limits
        protocol.clientHost = host
        return protocol

    def unregisterProtocol(self, protocol):
        WrappingFactory.unregisterProtocol(self, protocol)
        self.caps.release(protocol.clientHost)
        if not self.protocols and self._emptyWaiters:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)

    def whenEmpty(self):
        if not self.protocols:
            return succeed(None)
        d = Deferred(lambda d: self._emptyWaiters.remove(d))
        self._emptyWaiters.append(d)
        return d

    def stopFactory(self):
        WrappingFactory.stopFactory(self)
        self.limits.stop()
