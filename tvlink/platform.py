"""
The platform side (智能电视集成播控平台): the client that opens one
persistent link per payment endpoint and keeps it open.
"""

import random

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger
from zope.interface import implementer

from tvlink import wire
from tvlink.errors import NoLinkAvailable, RequestError
from tvlink.link import PLATFORM, IMessageHandler, LinkFactory, succeedWith
from tvlink.service import LinkService, failNow


def parseEndpoint(text):
    """
    Parse C{"HOST:PORT"} into C{(host, port)}.

    @raise ValueError: naming what is wrong.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("endpoint %r is not HOST:PORT" % (text,))
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise ValueError("endpoint %r has no host" % (text,))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("endpoint %r has no valid port (1-65535)" % (text,))
    return host, int(port)


class PlatformFactory(LinkFactory, ReconnectingClientFactory):
    """
    Keeps one link to one payment endpoint: connects, signs on, and
    reconnects with jittered exponential backoff whenever the link closes
    or goes silent.

    The delay before attempt I{n} is drawn uniformly from the upper half of
    C{min(maxDelay, initialDelay * factor ** (n - 1))}: the first retry
    comes within C{initialDelay} (1 s), later ones never past C{maxDelay}
    (60 s), and platforms restarted together spread out. It is reset once
    the peer has sent a valid frame (L{linkProven}), not on connect.
    """

    role = PLATFORM
    noisy = False
    initialDelay = 1.0
    factor = 2.0
    maxDelay = 60.0
    log = Logger(namespace="tvlink.platform")

    def __init__(self, endpoint, settings, handler, random=random.random):
        self.setUp(settings, handler)
        self.endpoint = endpoint
        self.random = random
        self.delay = self.initialDelay
        self.reconnects = 0

    def startedConnecting(self, connector):
        self.log.info(
            "link to {endpoint} connecting", link_event="connecting", endpoint=self.endpoint
        )

    def clientConnectionFailed(self, connector, reason):
        self.log.info(
            "link to {endpoint} could not connect: {why}",
            link_event="connect-failed",
            endpoint=self.endpoint,
            why=reason.getErrorMessage(),
        )
        ReconnectingClientFactory.clientConnectionFailed(self, connector, reason)

    def retry(self, connector=None):
        if not self.continueTrying:
            return
        if connector is None:
            connector = self.connector
        self.retries += 1
        if self.maxRetries is not None and self.retries > self.maxRetries:
            return
        ceiling = min(self.maxDelay, self.initialDelay * self.factor ** min(self.retries - 1, 64))
        self.delay = ceiling * (0.5 + 0.5 * self.random())
        self.reconnects += 1
        self.log.info(
            "link to {endpoint} retrying in {delay:.2f}s",
            link_event="retry",
            endpoint=self.endpoint,
            delay=self.delay,
        )

        def reconnect():
            self._callID = None
            connector.connect()

        self._callID = self.clock.callLater(self.delay, reconnect)

    def linkUp(self, link):
        LinkFactory.linkUp(self, link)
        d = link.request({"mti": "0800", "nmi": wire.SIGN_ON})
        d.addCallbacks(self._signOnAnswered, self._signOnFailed, (link,), None, (link,))

    def _signOnAnswered(self, answer, link):
        if link.state != "up":
            return
        resp = answer.get("resp")
        if resp == wire.APPROVED:
            link.becomeReady()
        else:
            self.log.warn(
                "link {peer} sign-on refused with {resp}",
                link_event="sign-on-refused",
                peer=link.peer,
                resp=resp,
            )
            link.close("sign-on refused with %s" % (resp,))

    def _signOnFailed(self, failure, link):
        failure.trap(RequestError)
        if link.state == "up":
            self.log.warn(
                "link {peer} sign-on failed: {why}",
                link_event="sign-on-failed",
                peer=link.peer,
                why=failure.getErrorMessage(),
            )
            link.close("sign-on failed")

    def linkProven(self, link):
        self.resetDelay()

    def signOnReceived(self, link, message):
        return wire.INVALID_TRANSACTION


@implementer(IMessageHandler)
class PlatformHandler:
    """
    The platform's default handler for requests from the payment side:
    C{0820} notifications are logged and acknowledged, anything else is
    answered C{12}.
    """

    log = Logger(namespace="tvlink.platform")

    def handle(self, message):
        if message["mti"] == "0820":
            self.log.info(
                "notification {key} from {sender}",
                key="/".join((message["sender"], message["stan"], message.get("time", ""))),
                sender=message["sender"],
            )
            return {"resp": wire.APPROVED}
        return {"resp": wire.INVALID_TRANSACTION}


class PlatformService(LinkService):
    """
    An L{IService} holding a link to each payment endpoint.

    @param endpoints: C{"HOST:PORT"} strings, one per payment node.
    @param options: C{heartbeat}, C{idle_timeout}, C{timeout},
        C{header}, C{max_frame}, C{frame_timeout}, C{sender},
        C{echo_interval}, C{reactor} (see L{tvlink.link.LinkSettings}).
    """

    role = PLATFORM
    defaultSender = "PLATFORM"
    log = Logger(namespace="tvlink.platform")

    def __init__(self, endpoints, handler=None, connect_timeout=10.0, **options):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("at least one payment endpoint is needed")
        self.endpoints = [parseEndpoint(e) for e in endpoints]
        LinkService.__init__(
            self, handler=handler if handler is not None else PlatformHandler(), **options
        )
        self.connect_timeout = float(connect_timeout)
        self._next = 0
        for host, port in self.endpoints:
            self.factories.append(
                PlatformFactory("%s:%d" % (host, port), self.settings, self.handler)
            )

    def startService(self):
        LinkService.startService(self)
        for factory, (host, port) in zip(self.factories, self.endpoints):
            factory.continueTrying = True
            self.reactor.connectTCP(host, port, factory, timeout=self.connect_timeout)

    def stopService(self):
        for factory in self.factories:
            factory.stopTrying()
        return LinkService.stopService(self)

    def whenReady(self):
        """
        A L{Deferred} that fires with a ready link once any link is ready.
        """
        ready = self.readyLinks()
        if ready:
            return succeedWith(ready[0])
        waiters = [f.whenReady() for f in self.factories]
        d = Deferred(lambda _: [w.cancel() for w in waiters if not w.called])
        for w in waiters:
            w.addCallbacks(self._firstReady, lambda f: None, (d, waiters))
        return d

    def _firstReady(self, link, d, waiters):
        if not d.called:
            for w in waiters:
                if not w.called:
                    w.cancel()
            d.callback(link)

    def pickLink(self):
        """
        A ready link, round robin; C{None} when there is none.
        """
        ready = self.readyLinks()
        if not ready:
            return None
        self._next = (self._next + 1) % len(ready)
        return ready[self._next]

    def request(self, message, timeout=None):
        """
        Send request C{message} (a C{dict}) to a payment node.

        @return: a L{Deferred} firing with the answer C{dict}, or failing
            with L{tvlink.errors.RequestTimeout}, L{tvlink.errors.LinkLost}
            or L{tvlink.errors.NoLinkAvailable}.
        """
        link = self.pickLink()
        if link is None:
            return failNow(NoLinkAvailable("no payment link is ready"))
        try:
            return link.request(message, timeout)
        except Exception as e:
            return failNow(e)
