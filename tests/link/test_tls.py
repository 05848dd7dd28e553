"""
Tests for TLS on the links: L{tvlink.link.tls}, the C{tls_*} options of both
services and the C{--tls-*} options of the tap.

Certificates are made for each test by L{tests.certs} in the test's own
temporary folder. The integration tests run both roles on the real reactor
on 127.0.0.1 (and a real twistd child), each with a deadline; nothing
sleeps.
"""

import os
import re
import shutil

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tests.certs import makeCertificates
from tests.processes import ReactorTestCase, getReactor, spawnTwistd, waitUntil, withDeadline
from tvlink import PaymentService, PlatformService
from tvlink.cli.tap import Options, makeService
from tvlink.link.settings import LinkSettings
from tvlink.link.tls import (
    ClientTLS,
    Identity,
    ServerTLS,
    TLSConfigError,
    TLSServerEndpoint,
    loadCertificates,
    loadPrivateKey,
)
from tvlink.link.tlslink import TLSLink
from tvlink.link.verify import IdentityCheckingCreator
from tvlink.payment.service import DemoHandler, PaymentFactory
from tvlink.platform.factory import PlatformFactory

#: A card the demo handler approves.
PAN = "6222020000000000018"

PURCHASE = {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "%012d" % 1234, "currency": "156"}


def parse(*argv):
    config = Options()
    config.parseOptions([str(a) for a in argv])
    return config


class CertificatesMixin:
    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        self.certs = makeCertificates(directory)
        # The keys are throwaway, but leave none lying about.
        self.addCleanup(shutil.rmtree, directory, True)

    def write(self, name, data):
        path = self.certs.path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path


class FileTests(CertificatesMixin, SynchronousTestCase):
    """
    Unreadable, unparsable or mismatched files fail at once with an error
    naming the file.
    """

    def test_missing(self):
        path = self.certs.path("nowhere.pem")
        e = self.assertRaises(TLSConfigError, loadCertificates, path, "TLS certificate file")
        self.assertIn(path, str(e))
        self.assertIn("cannot be read", str(e))

    def test_notPEM(self):
        path = self.write("junk.pem", b"not a certificate\n")
        e = self.assertRaises(TLSConfigError, loadCertificates, path)
        self.assertIn(path, str(e))
        e = self.assertRaises(TLSConfigError, loadPrivateKey, path)
        self.assertIn(path, str(e))

    def test_corrupt(self):
        with open(self.certs.server, "rb") as f:
            pem = f.read()
        path = self.write("corrupt.pem", pem.replace(pem[80:120], b"A" * 40))
        e = self.assertRaises(TLSConfigError, loadCertificates, path)
        self.assertIn(path, str(e))
        self.assertIn("does not parse", str(e))

    def test_mismatchedKey(self):
        e = self.assertRaises(TLSConfigError, Identity, self.certs.server, self.certs.otherKey)
        self.assertIn(self.certs.otherKey, str(e))
        self.assertIn(self.certs.server, str(e))
        self.assertIn("does not match", str(e))
        self.assertRaises(
            TLSConfigError, ServerTLS, self.certs.server, self.certs.clientKey, self.certs.ca
        )

    def test_encryptedKey(self):
        from cryptography.hazmat.primitives import serialization

        key = loadPrivateKey(self.certs.serverKey)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = self.write("encrypted.key", pem)
        e = self.assertRaises(TLSConfigError, loadPrivateKey, path)
        self.assertIn("encrypted", str(e))
        self.assertIn(path, str(e))

    def test_keyInCertificateFile(self):
        identity = Identity(self.certs.combined)
        self.assertIn("CN=platform TV01", identity.subject)
        e = self.assertRaises(TLSConfigError, Identity, self.certs.client)
        self.assertIn("no private key", str(e))

    def test_server(self):
        plain = ServerTLS(self.certs.server, self.certs.serverKey)
        self.assertFalse(plain.mutual)
        self.assertFalse(plain.options.verify)
        mutual = ServerTLS(self.certs.server, self.certs.serverKey, self.certs.ca)
        self.assertTrue(mutual.mutual)
        self.assertTrue(mutual.options.verify)
        self.assertTrue(mutual.options.requireCertificate)
        self.assertRaises(TLSConfigError, ServerTLS, None)
        self.assertRaises(ValueError, ServerTLS, self.certs.server, self.certs.serverKey, None, 0)

    def test_client(self):
        e = self.assertRaises(TLSConfigError, ClientTLS, None, self.certs.clientKey)
        self.assertIn("without a certificate", str(e))
        client = ClientTLS(ca=self.certs.ca)
        self.assertIsNone(client.identity)
        creator = client.creatorFor("127.0.0.1")
        self.assertIsInstance(creator, IdentityCheckingCreator)
        self.assertEqual(creator.hostname, "127.0.0.1")
        named = ClientTLS(ca=self.certs.ca, hostname="pay1.example")
        self.assertEqual(named.creatorFor("127.0.0.1").hostname, "pay1.example")
        self.assertRaises(TLSConfigError, ClientTLS, ca=self.certs.ca, hostname=" ")


class OptionsTests(CertificatesMixin, SynchronousTestCase):
    """
    C{--tls-cert}, C{--tls-key}, C{--tls-ca} on both roles and
    C{--tls-hostname} on the platform: checked when parsed, passed to the
    services by C{makeService}.
    """

    def payment(self, *extra):
        return parse("payment", "--listen", "tcp:0:interface=127.0.0.1", *extra)

    def platform(self, *extra):
        return parse("platform", "--connect", "127.0.0.1:7000", *extra)

    def test_payment(self):
        c = self.certs
        config = self.payment("--tls-cert", c.server, "--tls-key", c.serverKey, "--tls-ca", c.ca)
        service = makeService(config, reactor=MemoryReactorClock())
        self.assertIsInstance(service, PaymentService)
        self.assertTrue(service.tls.mutual)
        self.assertIsInstance(service.endpoint, TLSServerEndpoint)
        self.assertTrue(issubclass(service.factory.protocol, TLSLink))
        self.assertEqual(service.factory.tlsHandshakeTimeout, 10.0)

    def test_paymentPlain(self):
        service = makeService(self.payment(), reactor=MemoryReactorClock())
        self.assertIsNone(service.tls)
        self.assertFalse(issubclass(service.factory.protocol, TLSLink))

    def test_platform(self):
        c = self.certs
        reactor = MemoryReactorClock()
        config = self.platform(
            "--tls-cert", c.client, "--tls-key", c.clientKey, "--tls-ca", c.ca,
            "--tls-handshake-timeout", "2.5",
        )
        service = makeService(config, reactor=reactor)
        self.assertIsInstance(service, PlatformService)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(reactor.tcpClients, [])
        [(host, port, factory, creator, timeout, bind)] = reactor.sslClients
        self.assertEqual((host, port), ("127.0.0.1", 7000))
        # The reconnecting factory itself goes to connectSSL.
        self.assertIs(factory, service.factories[0])
        self.assertIsInstance(factory, PlatformFactory)
        self.assertIsInstance(creator, IdentityCheckingCreator)
        self.assertEqual(creator.hostname, "127.0.0.1")
        self.assertEqual(factory.tlsHandshakeTimeout, 2.5)

    def test_platformHostname(self):
        config = self.platform("--tls-ca", self.certs.ca, "--tls-hostname", "pay.example")
        service = makeService(config, reactor=MemoryReactorClock())
        self.assertEqual(service.factories[0].tlsCreator.hostname, "pay.example")
        self.assertIsNone(service.tls.identity)

    def test_platformPlain(self):
        reactor = MemoryReactorClock()
        service = makeService(self.platform(), reactor=reactor)
        self.assertIsNone(service.tls)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(reactor.tcpClients), 1)
        self.assertEqual(reactor.sslClients, [])

    def assertUsage(self, parser, option, *argv):
        e = self.assertRaises(UsageError, parser, *argv)
        self.assertIn(option, str(e))
        return str(e)

    def test_errors(self):
        c = self.certs
        missing = c.path("missing.pem")
        text = self.assertUsage(self.payment, "--tls-cert", "--tls-cert", missing, "--tls-key", c.serverKey)
        self.assertIn(missing, text)
        self.assertUsage(self.payment, "--tls-key", "--tls-cert", c.server, "--tls-key", c.otherKey)
        self.assertUsage(self.payment, "--tls-key", "--tls-cert", c.server, "--tls-key", c.server)
        self.assertUsage(
            self.payment, "--tls-ca", "--tls-cert", c.server, "--tls-key", c.serverKey, "--tls-ca", c.serverKey
        )
        self.assertUsage(self.payment, "--tls-cert", "--tls-ca", c.ca)
        self.assertUsage(
            self.payment, "--tls-handshake-timeout",
            "--tls-cert", c.server, "--tls-key", c.serverKey, "--tls-handshake-timeout", "0",
        )
        self.assertUsage(self.platform, "--tls-cert", "--tls-key", c.clientKey)
        self.assertUsage(self.platform, "--tls-cert", "--tls-cert", c.client)
        self.assertUsage(self.platform, "--tls-hostname", "--tls-ca", c.ca, "--tls-hostname", "a b")
        self.assertUsage(self.platform, "--tls-ca", "--tls-ca", missing)


class HandshakeTimeoutTests(CertificatesMixin, SynchronousTestCase):
    """
    A peer that never finishes the handshake is dropped after the
    handshake timeout, well before read-idle, on a Clock.
    """

    def test_server(self):
        clock = Clock()
        tls = ServerTLS(self.certs.server, self.certs.serverKey, self.certs.ca, handshake_timeout=3)
        factory = PaymentFactory(LinkSettings(reactor=clock), DemoHandler())
        tls.configure(factory)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        wrapper = TLSMemoryBIOFactory(tls.contextFactory, False, factory)
        proto = wrapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        [link] = factory.links
        clock.advance(2.9)
        self.assertEqual(link.state, "up")
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        # Aborted at once, not closed politely after close_timeout.
        self.assertTrue(transport.disconnected)
        proto.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(link.state, "lost")
        self.assertFalse(clock.getDelayedCalls())
        failed = [e for e in events if e.get("link_event") == "tls-failed"]
        self.assertEqual(len(failed), 1)
        self.assertEqual(failed[0]["reason"], "handshake not complete after 3s")
        self.assertEqual(failed[0]["peer"], "127.0.0.1:40000")


class _Silent(protocol.Protocol):
    """
    Accepts and says nothing: a peer that never starts TLS.
    """

    def connectionMade(self):
        self.factory.connections.append(self)

    def connectionLost(self, reason):
        self.factory.lost.append(self)


class _SilentFactory(protocol.Factory):
    protocol = _Silent

    def __init__(self):
        self.connections = []
        self.lost = []


class TLSLinkTests(CertificatesMixin, ReactorTestCase):
    """
    Both services over real TLS on 127.0.0.1.
    """

    timeout = 15

    def setUp(self):
        CertificatesMixin.setUp(self)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def tlsEvents(self, event, role):
        return [e for e in self.events if e.get("link_event") == event and e.get("role") == role]

    @defer.inlineCallbacks
    def startPayment(self, mutual=True, **options):
        c = self.certs
        options.setdefault("tls_cert", c.server)
        options.setdefault("tls_key", c.serverKey)
        if mutual:
            options.setdefault("tls_ca", c.ca)
        service = PaymentService("tcp:0:interface=127.0.0.1", heartbeat=1, idle_timeout=5, **options)
        service.startService()
        self.addCleanup(service.stopService)
        port = yield withDeadline(service.whenListening(), 5, "the payment side to listen")
        return service, port.getHost().port

    def startPlatform(self, port, **options):
        options.setdefault("timeout", 3)
        service = PlatformService(
            ["127.0.0.1:%d" % (port,)], connect_timeout=3, heartbeat=1, idle_timeout=5, **options
        )
        for factory in service.factories:
            factory.initialDelay = 0.05
            factory.maxDelay = 0.2
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @defer.inlineCallbacks
    def test_mutualTLS(self):
        """
        With certificates from the CA both trust, the platform signs on over
        TLS 1.2+ and a purchase is approved; both sides log the handshake
        with the peer's certificate, and the backoff is reset.
        """
        c = self.certs
        payment, port = yield self.startPayment()
        platform = self.startPlatform(port, tls_cert=c.client, tls_key=c.clientKey, tls_ca=c.ca)
        link = yield withDeadline(platform.whenReady(), 10, "the platform to sign on over TLS")
        answer = yield withDeadline(platform.request(dict(PURCHASE)), 5, "the purchase")
        self.assertEqual(answer["resp"], "00")
        self.assertTrue(ISSLTransport.providedBy(link.transport))
        peerCert = link.transport.getPeerCertificate().to_cryptography()
        self.assertIn("CN=localhost", peerCert.subject.rfc4514_string())
        [serverUp] = self.tlsEvents("tls-up", "payment")
        self.assertIn("CN=platform TV01", serverUp["subject"])
        self.assertIn(serverUp["version"], ("TLSv1.2", "TLSv1.3"))
        [clientUp] = self.tlsEvents("tls-up", "platform")
        self.assertIn("CN=localhost", clientUp["subject"])
        self.assertEqual(self.tlsEvents("tls-failed", "platform"), [])
        self.assertEqual(self.tlsEvents("tls-failed", "payment"), [])
        factory = platform.factories[0]
        self.assertEqual(factory.retries, 0)
        self.assertEqual(factory.delay, factory.initialDelay)
        # The payment side sees the platform's certificate too.
        [serverLink] = payment.readyLinks()
        self.assertIn(
            "CN=platform TV01",
            serverLink.transport.getPeerCertificate().to_cryptography().subject.rfc4514_string(),
        )

    @defer.inlineCallbacks
    def test_serverOnlyTLS(self):
        """
        Without C{tls_ca} the payment side asks for no client certificate;
        the platform still verifies the server.
        """
        payment, port = yield self.startPayment(mutual=False)
        platform = self.startPlatform(port, tls_ca=self.certs.ca)
        yield withDeadline(platform.whenReady(), 10, "the platform to sign on over TLS")
        [serverUp] = self.tlsEvents("tls-up", "payment")
        self.assertEqual(serverUp["subject"], "none")

    @defer.inlineCallbacks
    def assertRefused(self, platformReason, paymentReason, **platformOptions):
        """
        A platform with C{platformOptions} never gets a link: both sides log
        C{tls-failed} with the reason, and the platform keeps retrying with
        a growing backoff (never reset, since no valid frame came).
        """
        payment, port = yield self.startPayment()
        platform = self.startPlatform(port, **platformOptions)
        factory = platform.factories[0]
        yield waitUntil(
            lambda: len(self.tlsEvents("tls-failed", "platform")) >= 3
            and len(self.tlsEvents("tls-failed", "payment")) >= 3,
            10,
            "three refused handshakes logged on both sides",
        )
        for event in self.tlsEvents("tls-failed", "platform"):
            self.assertRegex(event["reason"], platformReason)
            self.assertEqual(event["endpoint"], "127.0.0.1:%d" % (port,))
        for event in self.tlsEvents("tls-failed", "payment"):
            self.assertRegex(event["reason"], paymentReason)
            self.assertRegex(event["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertGreaterEqual(factory.retries, 2)
        self.assertEqual(platform.readyLinks(), [])
        self.assertEqual(payment.readyLinks(), [])
        self.assertEqual(
            [e for e in self.events if e.get("link_event") == "ready"], []
        )

    @defer.inlineCallbacks
    def test_noClientCertificate(self):
        yield self.assertRefused(
            r"alert 'certificate required'|alert 'handshake failure'",
            r"did not return a certificate",
            tls_ca=self.certs.ca,
        )
        # Under TLS 1.3 the client has finished its handshake before the
        # server checks the client certificate: the platform saw "tls-up"
        # and was refused afterwards, and its backoff still grew, because
        # only a valid frame from the peer resets it.
        if self.tlsEvents("tls-up", "platform"):
            self.assertTrue(
                any(e["handshakeDone"] for e in self.tlsEvents("tls-failed", "platform"))
            )

    def test_clientCertificateFromAnotherCA(self):
        return self.assertRefused(
            r"alert 'unknown ca'",
            r"client certificate CN=platform TV01,O=tvlink tests not trusted: unable to get local issuer",
            tls_cert=self.certs.rogueClient,
            tls_key=self.certs.rogueClientKey,
            tls_ca=self.certs.ca,
        )

    def test_wrongHostname(self):
        return self.assertRefused(
            r"^server certificate does not name wrong\.example$",
            r"peer refused the handshake with the alert",
            tls_cert=self.certs.client,
            tls_key=self.certs.clientKey,
            tls_ca=self.certs.ca,
            tls_hostname="wrong.example",
        )

    def test_serverFromAnotherCA(self):
        """
        A platform that trusts another CA refuses the payment node.
        """
        return self.assertRefused(
            r"^server certificate CN=.* not trusted: ",
            r"alert 'unknown ca'",
            tls_cert=self.certs.client,
            tls_key=self.certs.clientKey,
            tls_ca=self.certs.rogueCA,
        )

    @defer.inlineCallbacks
    def test_plaintextPlatform(self):
        """
        A platform without TLS gets no link from a TLS payment node.
        """
        payment, port = yield self.startPayment()
        platform = self.startPlatform(port)
        yield waitUntil(
            lambda: len(self.tlsEvents("tls-failed", "payment")) >= 2,
            10,
            "the plaintext platform refused twice",
        )
        self.assertEqual(platform.readyLinks(), [])
        self.assertGreaterEqual(platform.factories[0].retries, 1)

    @defer.inlineCallbacks
    def test_serverHandshakeTimeout(self):
        """
        A client that connects and never starts the handshake is dropped
        after the handshake timeout, not after read-idle.
        """
        payment, port = yield self.startPayment(tls_handshake_timeout=0.3)
        reactor = getReactor()
        silent = _Silent()
        silent.factory = _SilentFactory()
        started = reactor.seconds()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), silent)
        self.addCleanup(lambda: silent.transport.abortConnection() if silent.transport.connected else None)
        yield waitUntil(lambda: silent.factory.lost, 5, "the payment side to drop the silent client")
        self.assertLess(reactor.seconds() - started, 3)
        [event] = self.tlsEvents("tls-failed", "payment")
        self.assertEqual(event["reason"], "handshake not complete after 0.3s")

    @defer.inlineCallbacks
    def test_platformHandshakeTimeout(self):
        """
        A "payment node" that accepts and never answers the handshake is
        dropped after the handshake timeout, and retried with backoff.
        """
        reactor = getReactor()
        silentFactory = _SilentFactory()
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(silentFactory)
        self.addCleanup(listening.stopListening)

        def closeAll():
            for p in silentFactory.connections:
                if p.transport.connected:
                    p.transport.abortConnection()

        self.addCleanup(closeAll)
        platform = self.startPlatform(
            listening.getHost().port, tls_ca=self.certs.ca, tls_handshake_timeout=0.3
        )
        yield waitUntil(
            lambda: len(self.tlsEvents("tls-failed", "platform")) >= 2, 10, "two handshake timeouts"
        )
        for event in self.tlsEvents("tls-failed", "platform"):
            self.assertEqual(event["reason"], "handshake not complete after 0.3s")
        self.assertGreaterEqual(platform.factories[0].retries, 1)


class TwistdTLSTests(CertificatesMixin, ReactorTestCase):
    """
    C{twistd tvlink payment --tls-*} as a real process, and an in-test
    platform linking to it over mutual TLS.
    """

    timeout = 15

    @defer.inlineCallbacks
    def test_payment(self):
        c = self.certs
        child = spawnTwistd(
            self,
            "payment",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--tls-cert", c.server,
            "--tls-key", c.serverKey,
            "--tls-ca", c.ca,
            "--heartbeat", "1",
            "--ledger", "memory",
            name="payment over TLS",
        )
        match = yield child.waitFor(r"payment listening on 127\.0\.0\.1:(\d+)", 10)
        port = int(match.group(1))

        platform = PlatformService(
            ["127.0.0.1:%d" % (port,)],
            tls_cert=c.client,
            tls_key=c.clientKey,
            tls_ca=c.ca,
            timeout=3,
            connect_timeout=3,
        )
        platform.startService()
        self.addCleanup(platform.stopService)
        yield withDeadline(platform.whenReady(), 10, "the platform to sign on to the twistd child")
        answer = yield withDeadline(platform.request(dict(PURCHASE)), 5, "the purchase")
        self.assertEqual(answer["resp"], "00")
        yield child.waitFor(r"TLS with 127\.0\.0\.1:\d+ up: TLSv1\.[23] .*CN=platform TV01", 5)

        # A platform without a client certificate is refused, and the child
        # says so.
        mark = child.mark()
        stranger = PlatformService(["127.0.0.1:%d" % (port,)], tls_ca=c.ca, timeout=3, connect_timeout=3)
        for factory in stranger.factories:
            factory.initialDelay = 0.05
        stranger.startService()
        self.addCleanup(stranger.stopService)
        line = yield child.waitFor(r"link refused: (.*)", 10, after=mark)
        self.assertIn("did not return a certificate", line.group(1))
        self.assertEqual(stranger.readyLinks(), [])
        self.assertFalse(re.search(r"Traceback", "\n".join(child.lines)))
