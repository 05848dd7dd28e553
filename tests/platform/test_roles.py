"""
Tests for the platform's reconnecting factory and both services, on a
MemoryReactorClock.
"""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from tvlink import PaymentService, PlatformService
from tvlink.errors import NoLinkAvailable
from tvlink.link.settings import LinkSettings
from tvlink.platform.endpoints import parseEndpoint
from tvlink.platform.factory import PlatformFactory
from tvlink.platform.service import PlatformHandler


class FakeConnector:
    def __init__(self):
        self.attempts = 0

    def connect(self):
        self.attempts += 1

    def stopConnecting(self):
        pass


class BackoffTests(SynchronousTestCase):
    def factory(self, random=lambda: 1.0):
        self.reactor = MemoryReactorClock()
        f = PlatformFactory("h:1", LinkSettings(reactor=self.reactor), PlatformHandler(), random=random)
        return f

    def delays(self, f, n):
        connector = FakeConnector()
        out = []
        for _ in range(n):
            f.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
            out.append(f.delay)
            self.reactor.advance(f.delay)
        return out, connector

    def test_first_retry_within_a_second_then_doubling_capped(self):
        delays, connector = self.delays(self.factory(), 10)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60])
        self.assertEqual(connector.attempts, 10)

    def test_stop_trying_cancels_the_scheduled_reconnect(self):
        f = self.factory()
        connector = FakeConnector()
        f.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        f.stopTrying()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(f.reconnectCall)
        self.reactor.advance(f.maxDelay)
        self.assertEqual(connector.attempts, 0)

    def test_jitter_in_upper_half(self):
        delays, _ = self.delays(self.factory(random=lambda: 0.0), 8)
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30])

    def signOnAnswer(self, t, resp):
        request = json.loads(t.value()[4:])
        body = json.dumps(dict(request, mti="0810", resp=resp)).encode()
        return b"%04d" % len(body) + body

    def test_reset_after_sign_on_not_on_connect(self):
        f = self.factory()
        self.delays(f, 5)
        link = f.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        t = StringTransport()
        link.makeConnection(t)
        self.assertEqual(f.retries, 5)  # connecting alone proves nothing
        link.dataReceived(b"0000")
        self.assertEqual(f.retries, 5)  # nor does a heartbeat
        link.dataReceived(self.signOnAnswer(t, "00"))
        self.assertEqual(link.state, "ready")
        self.assertEqual(f.retries, 0)
        self.assertEqual(f.delay, f.initialDelay)

    def test_refused_sign_on_keeps_backoff(self):
        f = self.factory()
        self.delays(f, 5)
        link = f.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        t = StringTransport()
        link.makeConnection(t)
        link.dataReceived(self.signOnAnswer(t, "12"))
        self.assertTrue(t.disconnecting)
        self.assertEqual(f.retries, 5)

    def test_platform_reconnects_after_sign_off(self):
        f = self.factory()
        link = f.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        t = StringTransport()
        link.makeConnection(t)
        link.dataReceived(self.signOnAnswer(t, "00"))
        t.clear()
        body = json.dumps({"mti": "0800", "nmi": "002", "sender": "PAY", "stan": "000009", "time": "t"}).encode()
        link.dataReceived(b"%04d" % len(body) + body)
        self.assertEqual(json.loads(t.value()[4:])["resp"], "00")
        self.reactor.advance(0)
        self.assertTrue(t.disconnecting)

    def test_reconnect_on_read_idle(self):
        f = self.factory()
        f.settings.idle_timeout = 10
        link = f.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        t = StringTransport()
        link.makeConnection(t)
        self.reactor.advance(10)
        self.assertTrue(t.disconnecting)
        connector = FakeConnector()
        link.connectionLost(Failure(Exception("closed")))
        f.clientConnectionLost(connector, Failure(Exception("closed")))
        self.reactor.advance(1)
        self.assertEqual(connector.attempts, 1)

    def test_stop_trying(self):
        f = self.factory()
        connector = FakeConnector()
        f.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        f.stopTrying()
        self.reactor.advance(100)
        self.assertEqual(connector.attempts, 0)

    def test_parse_endpoint(self):
        self.assertEqual(parseEndpoint("127.0.0.1:7000"), ("127.0.0.1", 7000))
        self.assertEqual(parseEndpoint("[::1]:7000"), ("::1", 7000))
        for bad in ("127.0.0.1", ":7000", "h:0", "h:70000", "h:x"):
            self.assertRaises(ValueError, parseEndpoint, bad)


class ServiceTests(SynchronousTestCase):
    def linked(self, **options):
        """
        A running PlatformService and PaymentService on one
        MemoryReactorClock, their first connection pumped by iosim.
        """
        reactor = MemoryReactorClock()
        payment = PaymentService("tcp:7000:interface=127.0.0.1", reactor=reactor, **options)
        platform = PlatformService(["127.0.0.1:7000"], reactor=reactor, **options)
        payment.startService()
        platform.startService()
        self.assertEqual(reactor.tcpServers[0][0], 7000)
        host, port, clientFactory = reactor.tcpClients[0][:3]
        self.assertEqual((host, port), ("127.0.0.1", 7000))
        serverFactory = reactor.tcpServers[0][1]
        client = clientFactory.buildProtocol(None)
        server = serverFactory.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=reactor)
        return reactor, payment, platform, pump

    def test_request_and_when_ready(self):
        reactor, payment, platform, pump = self.linked()
        ready = platform.whenReady()
        self.assertEqual(self.successResultOf(ready).state, "ready")
        d = platform.request({"mti": "0200", "proc": "000000", "pan": "6222020000000000018", "amount": "000000000100"})
        pump.flush()
        self.assertEqual(self.successResultOf(d)["resp"], "00")
        self.assertEqual(len(payment.readyLinks()), 1)
        self.assertTrue(payment.address().endswith(":7000"))

    def test_when_ready_waits(self):
        reactor = MemoryReactorClock()
        platform = PlatformService("127.0.0.1:7000", reactor=reactor)
        platform.startService()
        d = platform.whenReady()
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d)

    def test_no_link_waits_then_fails(self):
        reactor = MemoryReactorClock()
        platform = PlatformService(["127.0.0.1:7000"], reactor=reactor, timeout=40)
        platform.startService()
        d = platform.request({"mti": "0200"})
        reactor.advance(39)
        self.assertNoResult(d)
        reactor.advance(1)
        f = self.failureResultOf(d, NoLinkAvailable)
        self.assertIn("no payment link available within 40s", str(f.value))
        self.assertEqual(platform.settings.stans.inFlight(), 0)

    def test_payment_sends_notification(self):
        reactor, payment, platform, pump = self.linked()
        link = payment.readyLinks()[0]
        d = payment.request(link, {"mti": "0820", "order": "X"})
        pump.flush()
        self.assertEqual(self.successResultOf(d)["mti"], "0830")

    def test_stop_drains_then_closes(self):
        reactor, payment, platform, pump = self.linked(timeout=40)
        held = []
        payment.factory.handler.handle = lambda m: held.append(Deferred()) or held[-1]
        d = platform.request({"mti": "0200", "proc": "000000"})
        pump.flush()
        stopped = platform.stopService()
        pump.flush()
        self.assertNoResult(stopped)  # the request in flight may still finish
        self.failureResultOf(platform.request({"mti": "0200"}), NoLinkAvailable)
        held[0].callback({"resp": "00"})
        pump.flush()
        self.assertEqual(self.successResultOf(d)["resp"], "00")
        self.successResultOf(stopped)
        self.assertFalse(platform.factories[0].continueTrying)
        self.assertEqual(platform.status()[0]["state"], "drained")
        self.assertEqual(platform.links(), [])
        # The payment side saw the sign-off before the close.
        self.assertEqual(payment.factory.links, set())

    def test_status(self):
        reactor, payment, platform, pump = self.linked()
        reactor.advance(5)
        [entry] = platform.status()
        self.assertEqual(entry["state"], "ready")
        self.assertEqual(entry["endpoint"], "127.0.0.1:7000")
        self.assertEqual(entry["answered"], 1)  # the sign-on
        self.assertEqual(entry["sinceFrameIn"], 5)

    def test_bad_options(self):
        for bad in ({"heartbeat": 0}, {"idle_timeout": "x"}, {"header": "ascii6"}, {"sender": ""}):
            self.assertRaises(ValueError, PlatformService, ["h:1"], **bad)
        self.assertRaises(ValueError, PlatformService, [])
