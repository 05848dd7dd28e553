"""
The link's essential behaviours, proven twice: over plain TCP and over
mutual TLS on loopback.

L{_LinkBehaviours} holds the scenarios: sign-on, purchase and balance, a
payment-to-platform notification, echo tests both ways, heartbeats that
keep an idle link up, read-idle dropping a silent peer, reconnecting to a
restarted payment service, pending requests failing with L{LinkLost} when
the link dies, a bad frame closing that link only, and a pool spreading
requests by least pending. Its C{serverTLS}, C{clientTLS} and
C{rawEndpoint} hooks say how a link is secured; L{TCPLinkSuiteTests} and
L{TLSLinkSuiteTests} run the same scenarios with each.

Both roles run in-process (L{tvlink.PaymentService},
L{tvlink.PlatformService}) on the real reactor on 127.0.0.1; the TLS
certificates are made per test by L{tests.certs} and removed after it.
Every wait has a deadline; nothing sleeps.
"""

import os
import shutil
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from tests.certs import makeCertificates
from tests.processes import RawClient, ReactorTestCase, getReactor, pause, waitUntil, withDeadline
from tvlink import PaymentService, PlatformService
from tvlink.errors import LinkLost
from tvlink.link.interfaces import IMessageHandler
from tvlink.payment.service import DemoHandler
from tvlink.platform.service import PlatformHandler

#: A card the demo handler approves, good for 1000.00.
PAN = "6222020000000000018"
LIMIT = 100000


def purchase(amount, order):
    return {
        "mti": "0200",
        "proc": "000000",
        "pan": PAN,
        "amount": "%012d" % (amount,),
        "currency": "156",
        "order": order,
    }


BALANCE = {"mti": "0200", "proc": "300000", "pan": PAN}
ECHO = {"mti": "0800", "nmi": "301"}


@implementer(IMessageHandler)
class PaymentHandler:
    """
    The demo account system, counting what it is asked, and able to hold
    its answers back until released.
    """

    def __init__(self):
        self.demo = DemoHandler()
        self.seen = []
        self.holding = False
        self.held = []

    def handle(self, message):
        self.seen.append(message)
        if self.holding:
            d = defer.Deferred()
            self.held.append((d, message))
            return d
        return self.demo.handle(message)

    def release(self):
        self.holding = False
        held, self.held = self.held, []
        for d, message in held:
            d.callback(self.demo.handle(message))


class RecordingPlatformHandler(PlatformHandler):
    """
    The platform's default handler, remembering what it answered.
    """

    def __init__(self):
        self.seen = []

    def handle(self, message):
        self.seen.append(message)
        return PlatformHandler.handle(self, message)


@implementer(IHandshakeListener)
class RawPeer(RawClient):
    """
    A raw ascii4 peer running no tvlink code; over TLS it knows when its
    handshake is done.
    """

    handshakeDone = False

    def __init__(self):
        RawClient.__init__(self)
        self.handshake = defer.Deferred()

    def handshakeCompleted(self):
        self.handshakeDone = True
        self.handshake.callback(None)


class _LinkBehaviours:
    """
    The scenarios. A subclass (also a L{ReactorTestCase}) says how links
    are secured through the hooks below.
    """

    timeout = 30

    #: Whether links are TLS.
    secured = False

    #: The codec both ends use, and the senders it can carry.
    codec = "json"
    paymentSender = "PAYMENT"
    platformSender = "PLATFORM"

    def serverTLS(self):
        """
        The C{tls_*} keywords of a L{PaymentService}.
        """
        return {}

    def clientTLS(self):
        """
        The C{tls_*} keywords of a L{PlatformService}.
        """
        return {}

    def rawEndpoint(self, port):
        """
        A client endpoint to the payment service on C{port} for a raw peer.
        """
        return TCP4ClientEndpoint(getReactor(), "127.0.0.1", port, timeout=5)

    def assertSecured(self, link, peerSubject):
        """
        C{link} runs over what this suite promises; over TLS its peer
        presented a certificate naming C{peerSubject}.
        """
        self.assertFalse(ISSLTransport.providedBy(link.transport))

    # -- fixtures ----------------------------------------------------------

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def linkEvents(self, name, **match):
        return [
            e
            for e in self.events
            if e.get("link_event") == name and all(e.get(k) == v for k, v in match.items())
        ]

    @defer.inlineCallbacks
    def startPayment(self, port=0, handler=None, **options):
        options.setdefault("heartbeat", 1)
        options.setdefault("idle_timeout", 5)
        options.setdefault("timeout", 5)
        options.update(self.serverTLS())
        options.setdefault("codec", self.codec)
        options.setdefault("sender", self.paymentSender)
        handler = handler if handler is not None else PaymentHandler()
        service = PaymentService("tcp:%d:interface=127.0.0.1" % (port,), handler=handler, **options)
        service.startService()
        self.addCleanup(service.stopService)
        listening = yield withDeadline(service.whenListening(), 5, "the payment service to listen")
        return service, listening.getHost().port

    def startPlatform(self, ports, **options):
        options.setdefault("heartbeat", 1)
        options.setdefault("idle_timeout", 5)
        options.setdefault("timeout", 5)
        options.setdefault("handler", RecordingPlatformHandler())
        options.update(self.clientTLS())
        options.setdefault("codec", self.codec)
        options.setdefault("sender", self.platformSender)
        service = PlatformService(["127.0.0.1:%d" % (p,) for p in ports], connect_timeout=3, **options)
        for factory in service.factories:
            factory.initialDelay = 0.05
            factory.maxDelay = 0.2
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @defer.inlineCallbacks
    def linked(self, paymentOptions={}, platformOptions={}):
        """
        A payment service and a platform signed on to it: fire with
        C{(payment, port, platform, platformLink, paymentLink)}.
        """
        payment, port = yield self.startPayment(**paymentOptions)
        platform = self.startPlatform([port], **platformOptions)
        link = yield withDeadline(platform.whenReady(), 10, "the platform to sign on")
        serverLink = yield withDeadline(payment.whenReady(), 5, "the payment side to see the sign-on")
        return payment, port, platform, link, serverLink

    @defer.inlineCallbacks
    def connectRaw(self, port):
        """
        A L{RawPeer} connected to C{port} (its TLS handshake done, over
        TLS); aborted in cleanup.
        """
        peer = RawPeer()
        yield withDeadline(connectProtocol(self.rawEndpoint(port), peer), 5, "a raw peer to connect")

        def cleanup():
            peer.close()
            return peer.whenLost(5)

        self.addCleanup(cleanup)
        if self.secured:
            yield withDeadline(peer.handshake, 5, "the raw peer's TLS handshake")
        return peer

    # -- scenarios ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_signOnPurchaseAndBalance(self):
        """
        The platform signs on; a purchase is approved, the balance reflects
        it, an over-limit purchase is declined; both ends run over what the
        suite promises.
        """
        payment, port, platform, link, serverLink = yield self.linked()
        self.assertEqual(link.state, "ready")
        self.assertEqual(serverLink.state, "ready")
        self.assertEqual(serverLink.platform, self.platformSender)
        self.assertSecured(link, "CN=localhost")
        self.assertSecured(serverLink, "CN=platform TV01")

        answer = yield withDeadline(platform.request(purchase(1234, "S-1")), 5, "the purchase")
        self.assertEqual((answer["mti"], answer["resp"]), ("0210", "00"))
        answer = yield withDeadline(platform.request(dict(BALANCE)), 5, "the balance inquiry")
        self.assertEqual((answer["resp"], answer["balance"]), ("00", "%012d" % (LIMIT - 1234,)))
        answer = yield withDeadline(platform.request(purchase(LIMIT, "S-2")), 5, "the over-limit purchase")
        self.assertEqual(answer["resp"], "51")
        self.assertEqual([m["mti"] for m in payment.handler.seen], ["0200"] * 3)
        self.assertEqual(self.linkEvents("violation"), [])

    @defer.inlineCallbacks
    def test_notificationToPlatform(self):
        """
        The payment side sends a C{0820} notification on the platform's
        link and gets C{0830}/C{00}.
        """
        payment, port, platform, link, serverLink = yield self.linked()
        answer = yield withDeadline(
            payment.request(serverLink, {"mti": "0820", "order": "N-1"}), 5, "the 0830"
        )
        self.assertEqual((answer["mti"], answer["resp"], answer["sender"]), ("0830", "00", self.paymentSender))
        [seen] = platform.handler.seen
        self.assertEqual((seen["mti"], seen["order"], seen["stan"]), ("0820", "N-1", answer["stan"]))

    @defer.inlineCallbacks
    def test_echoBothWays(self):
        """
        Echo tests are answered whichever side asks, by request and by
        each service's echo interval.
        """
        payment, port, platform, link, serverLink = yield self.linked(
            {"echo_interval": 0.2}, {"echo_interval": 0.2}
        )
        answer = yield withDeadline(link.request(dict(ECHO)), 5, "the platform's echo test")
        self.assertEqual((answer["mti"], answer["nmi"], answer["resp"]), ("0810", "301", "00"))
        answer = yield withDeadline(serverLink.request(dict(ECHO)), 5, "the payment side's echo test")
        self.assertEqual((answer["mti"], answer["nmi"], answer["resp"]), ("0810", "301", "00"))
        yield waitUntil(
            lambda: len(self.linkEvents("echo", peer=link.peer)) >= 2
            and len(self.linkEvents("echo", peer=serverLink.peer)) >= 2,
            5,
            "two periodic echo tests from each side",
        )
        for event in self.linkEvents("echo"):
            self.assertEqual(event["resp"], "00")
        self.assertEqual(self.linkEvents("echo-failed"), [])

    @defer.inlineCallbacks
    def test_heartbeatsKeepIdleLinkUp(self):
        """
        A link with nothing to say stays up well past the idle timeout on
        heartbeats alone, both ways.
        """
        timers = {"heartbeat": 0.2, "idle_timeout": 0.8}
        payment, port, platform, link, serverLink = yield self.linked(timers, timers)
        before = (link.counters["heartbeatsIn"], serverLink.counters["heartbeatsIn"])
        yield pause(2.5)
        self.assertEqual(link.state, "ready")
        self.assertEqual(serverLink.state, "ready")
        self.assertIs(platform.factories[0].link, link)
        self.assertEqual(payment.readyLinks(), [serverLink])
        self.assertEqual(platform.factories[0].reconnects, 0)
        self.assertGreaterEqual(link.counters["heartbeatsIn"] - before[0], 5)
        self.assertGreaterEqual(serverLink.counters["heartbeatsIn"] - before[1], 5)
        self.assertEqual(self.linkEvents("heartbeat-timeout"), [])
        answer = yield withDeadline(platform.request(dict(BALANCE)), 5, "a request after the quiet")
        self.assertEqual(answer["resp"], "00")

    @defer.inlineCallbacks
    def test_readIdleClosesSilentPeer(self):
        """
        A peer that connects (and over TLS finishes its handshake) then
        says nothing is dropped once the idle timeout passes, not before,
        and not by the handshake timeout.
        """
        payment, port = yield self.startPayment(idle_timeout=0.8, heartbeat=5)
        peer = yield self.connectRaw(port)
        yield peer.whenLost(5, "the payment side to drop the silent peer")
        elapsed = peer.lostAt - peer.connectedAt
        self.assertGreaterEqual(elapsed, 0.7)
        self.assertLess(elapsed, 3.0)
        self.assertEqual(peer.frames, [])
        peerName = "127.0.0.1:%d" % (peer.peerPort,)
        [event] = self.linkEvents("heartbeat-timeout")
        self.assertEqual(event["peer"], peerName)
        yield waitUntil(lambda: not payment.links(), 5, "the payment side to forget the link")
        self.assertEqual(self.linkEvents("tls-failed"), [])
        if self.secured:
            self.assertEqual(len(self.linkEvents("tls-up", role="payment", peer=peerName)), 1)

    @defer.inlineCallbacks
    def test_reconnectAfterRestart(self):
        """
        When the payment service stops the platform loses its link and
        retries; once a payment service listens on the same port again it
        links up again (over the same kind of link), with its backoff
        reset.
        """
        payment, port, platform, link, serverLink = yield self.linked()
        factory = platform.factories[0]
        yield withDeadline(payment.stopService(), 10, "the payment service to stop")
        yield waitUntil(lambda: link.state == "lost", 5, "the platform to notice")
        yield waitUntil(lambda: factory.reconnects >= 2, 5, "the platform to retry")
        self.assertEqual(platform.readyLinks(), [])
        self.assertGreaterEqual(len(self.linkEvents("connect-failed")), 1)

        again, samePort = yield self.startPayment(port=port)
        self.assertEqual(samePort, port)
        newLink = yield withDeadline(platform.whenReady(), 10, "the platform to sign on again")
        self.assertIsNot(newLink, link)
        self.assertSecured(newLink, "CN=localhost")
        answer = yield withDeadline(platform.request(dict(BALANCE)), 5, "a request on the new link")
        self.assertEqual(answer["resp"], "00")
        self.assertEqual(len(again.handler.seen), 1)
        self.assertEqual(factory.retries, 0)

    @defer.inlineCallbacks
    def test_pendingRequestsFailWithLinkLost(self):
        """
        Requests waiting for their answer when the link dies fail with
        L{LinkLost} at once (not at their timeout); the platform links up
        again and is answered.
        """
        payment, port, platform, link, serverLink = yield self.linked(platformOptions={"timeout": 20})
        handler = payment.handler
        handler.holding = True
        pending = [platform.request(purchase(100 + i, "P-%d" % (i,))) for i in range(3)]
        failures = []
        for d in pending:
            d.addErrback(failures.append)
        yield waitUntil(lambda: len(handler.held) == 3, 5, "the payment side to hold three requests")
        self.assertEqual(link.inFlight(), 3)
        died = getReactor().seconds()
        serverLink.transport.abortConnection()
        yield waitUntil(lambda: len(failures) == 3, 5, "the pending requests to fail")
        self.assertLess(getReactor().seconds() - died, 3)
        for failure in failures:
            self.assertTrue(failure.check(LinkLost), failure)
            self.assertIn("lost before the answer came", failure.getErrorMessage())
        self.assertEqual(link.inFlight(), 0)

        handler.holding = False
        newLink = yield withDeadline(platform.whenReady(), 10, "the platform to link up again")
        self.assertIsNot(newLink, link)
        answer = yield withDeadline(platform.request(dict(BALANCE)), 5, "a request on the new link")
        self.assertEqual(answer["resp"], "00")

    @defer.inlineCallbacks
    def test_badFrameClosesThatLinkOnly(self):
        """
        A header that is not a length, or that announces more than the
        maximum frame, is a protocol violation that closes that link; the
        platform's link beside it carries on.
        """
        payment, port, platform, link, serverLink = yield self.linked({"max_frame": 512}, {"max_frame": 512})
        digits = yield self.connectRaw(port)
        digits.sendRaw(b"12ab{}")
        large = yield self.connectRaw(port)
        large.sendRaw(b"0513")
        yield digits.whenLost(5, "the non-digit header to close its link")
        yield large.whenLost(5, "the oversize header to close its link")
        yield waitUntil(lambda: len(self.linkEvents("violation")) >= 2, 5, "both violations logged")
        reasons = {e["peer"]: e["reason"] for e in self.linkEvents("violation")}
        self.assertEqual(len(reasons), 2)
        self.assertIn("not four decimal digits", reasons["127.0.0.1:%d" % (digits.peerPort,)])
        self.assertEqual(
            reasons["127.0.0.1:%d" % (large.peerPort,)], "frame of 513 bytes exceeds the maximum of 512"
        )
        self.assertEqual(payment.factory.counters["violations"], 2)
        self.assertEqual(self.linkEvents("tls-failed"), [])

        answer = yield withDeadline(platform.request(dict(BALANCE)), 5, "a request on the good link")
        self.assertEqual(answer["resp"], "00")
        self.assertEqual(link.state, "ready")
        self.assertEqual(payment.readyLinks(), [serverLink])
        self.assertEqual(platform.factories[0].reconnects, 0)

    @defer.inlineCallbacks
    def test_burstInBatches(self):
        """
        A burst of 300 requests, many batches at each end (reading paused
        and resumed each time), is answered whole, each answer to its own
        request.
        """
        payment, port, platform, link, serverLink = yield self.linked(
            paymentOptions={"max_batch": 3}, platformOptions={"max_batch": 2}
        )
        answers = yield withDeadline(
            defer.gatherResults([platform.request(dict(BALANCE)) for _ in range(300)]),
            20,
            "a burst of 300",
        )
        self.assertEqual([a["resp"] for a in answers], ["00"] * 300)
        self.assertEqual(len({a["stan"] for a in answers}), 300)
        self.assertEqual(len(payment.handler.seen), 300)
        self.assertEqual((link.backlog, serverLink.backlog), (0, 0))
        self.assertEqual(link.state, "ready")

    @defer.inlineCallbacks
    def test_poolLeastPending(self):
        """
        A platform linked to two payment services spreads a burst evenly,
        and sends nothing more to the one sitting on answers while the
        other answers.
        """
        (slow, slowPort), (fast, fastPort) = yield defer.gatherResults(
            [self.startPayment(), self.startPayment()]
        )
        platform = self.startPlatform([slowPort, fastPort], balance="least-pending")
        yield waitUntil(lambda: len(platform.readyLinks()) == 2, 10, "both links ready")
        for link in platform.readyLinks():
            self.assertSecured(link, "CN=localhost")

        burst = yield withDeadline(
            defer.gatherResults([platform.request(dict(BALANCE)) for _ in range(20)]), 5, "a burst of 20"
        )
        self.assertEqual({a["resp"] for a in burst}, {"00"})
        self.assertEqual((len(slow.handler.seen), len(fast.handler.seen)), (10, 10))

        slow.handler.holding = True
        opening = [platform.request(purchase(10 + i, "L-%d" % (i,))) for i in range(4)]
        yield waitUntil(lambda: len(slow.handler.held) == 2, 5, "two requests held by the slow node")
        for i in range(10):
            answer = yield withDeadline(platform.request(dict(BALANCE)), 5, "a request while one node is slow")
            self.assertEqual(answer["resp"], "00")
        self.assertEqual((len(slow.handler.seen), len(fast.handler.seen)), (12, 22))
        slow.handler.release()
        answers = yield withDeadline(defer.gatherResults(opening), 5, "the held requests")
        self.assertEqual([a["resp"] for a in answers], ["00"] * 4)


class TCPLinkSuiteTests(_LinkBehaviours, ReactorTestCase):
    """
    The link's behaviours over plain TCP.
    """


class TLSLinkSuiteTests(_LinkBehaviours, ReactorTestCase):
    """
    The same behaviours over mutual TLS: the payment side requires a
    platform certificate from the test CA; the platform verifies the
    payment node's certificate and address.
    """

    secured = True

    def setUp(self):
        _LinkBehaviours.setUp(self)
        directory = tempfile.mkdtemp(prefix="tvlink-tls-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.certs = makeCertificates(os.path.join(directory, "certs"))

    def serverTLS(self):
        c = self.certs
        return {"tls_cert": c.server, "tls_key": c.serverKey, "tls_ca": c.ca}

    def clientTLS(self):
        c = self.certs
        return {"tls_cert": c.client, "tls_key": c.clientKey, "tls_ca": c.ca}

    def rawEndpoint(self, port):
        c = self.certs

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        # Twisted's and cryptography's own loaders, not tvlink's.
        options = ssl.optionsForClientTLS(
            "127.0.0.1",
            trustRoot=ssl.Certificate.loadPEM(read(c.ca)),
            extraCertificateOptions={
                "certificate": x509.load_pem_x509_certificate(read(c.client)),
                "privateKey": serialization.load_pem_private_key(read(c.clientKey), password=None),
            },
        )
        return wrapClientTLS(options, _LinkBehaviours.rawEndpoint(self, port))

    def assertSecured(self, link, peerSubject):
        self.assertTrue(ISSLTransport.providedBy(link.transport))
        self.assertTrue(link.tlsDone)
        connection = link.transport.getHandle()
        self.assertIn(connection.get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))
        subject = link.transport.getPeerCertificate().to_cryptography().subject.rfc4514_string()
        self.assertIn(peerSubject, subject)
