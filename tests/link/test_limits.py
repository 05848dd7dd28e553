"""
Tests for the resource limits: links per node and per peer, requests in
flight per link, handler concurrency.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import Events, HoldingHandler, Pair, PoolRig, RecordingHandler, SingleLink, frame, frames, purchase
from tvlink.cli.tap import Options
from tvlink.errors import LinkBusy
from tvlink.link.settings import LinkSettings
from tvlink.payment.service import PaymentFactory


def request(n):
    return {"mti": "0200", "proc": "300000", "sender": "P", "stan": "%06d" % n, "time": "0101000000"}


class LinkCountTests(SynchronousTestCase):
    def factory(self, **limits):
        self.clock = Clock()
        return PaymentFactory(LinkSettings(reactor=self.clock), RecordingHandler(), **limits)

    def connect(self, factory, host, port):
        from twisted.internet.testing import StringTransport

        link = factory.buildProtocol(IPv4Address("TCP", host, port))
        if link is not None:
            link.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, port)))
        return link

    def test_per_peer_then_total(self):
        f = self.factory(max_links=5, max_links_per_peer=3)
        events = Events(self)
        links = [self.connect(f, "10.0.0.1", 1000 + i) for i in range(4)]
        self.assertIsNone(links[3])
        self.assertEqual(f.perPeer, {"10.0.0.1": 3})
        others = [self.connect(f, "10.0.0.2", 2000 + i) for i in range(3)]
        self.assertEqual([l is None for l in others], [False, False, True])
        limits = [e["limit"] for e in events.named("limit")]
        self.assertEqual(limits, ["max-links-per-peer", "max-links"])
        # One closes: its peer may connect again.
        from twisted.python.failure import Failure

        links[0].connectionLost(Failure(Exception("bye")))
        self.assertEqual(f.perPeer["10.0.0.1"], 2)
        self.assertIsNotNone(self.connect(f, "10.0.0.1", 1100))

    def test_flood_is_logged_as_a_count(self):
        f = self.factory(max_links=1, max_links_per_peer=1)
        events = Events(self)
        self.connect(f, "10.0.0.1", 1)
        for i in range(1000):
            self.connect(f, "10.0.0.1", 2 + i)
        self.assertEqual(len(events.named("limit")), 1)
        self.clock.advance(10)
        # The tail of the flood is reported when the interval is over.
        [first, tail] = events.named("limit")
        self.assertEqual(tail["count"], 999)
        self.connect(f, "10.0.0.1", 5000)
        self.clock.advance(10)
        self.assertEqual(events.named("limit")[-1]["count"], 1)
        self.assertEqual(f.limits.hits["max-links"], 1001)
        self.assertEqual(f.limits._flushes, {})


class SignOnDeadlineTests(SynchronousTestCase):
    def test_link_that_never_signs_on_is_closed(self):
        s = SingleLink(sign_on_timeout=30)
        events = Events(self)
        s.clock.advance(29)
        s.link.dataReceived(b"0000")  # heartbeats do not count
        self.assertFalse(s.transport.disconnecting)
        s.clock.advance(1)
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(len(events.named("no-sign-on")), 1)

    def test_signed_on_link_stays(self):
        s = SingleLink(sign_on_timeout=30)
        s.signOn()
        s.clock.advance(31)
        self.assertFalse(s.transport.disconnecting)


class InFlightTests(SynchronousTestCase):
    def test_inbound_beyond_limit_answered_91(self):
        handler = HoldingHandler()
        s = SingleLink(handler=handler, max_in_flight=2)
        s.signOn()
        s.receive(request(2), request(3), request(4))
        self.assertEqual(len(handler.held), 2)
        out = s.sent()
        self.assertEqual([(m["stan"], m["resp"]) for m in out], [("000004", "91")])
        handler.releaseAll()
        self.assertEqual([m["resp"] for m in s.sent()], ["00", "00"])
        self.assertEqual(s.link.handling, 0)
        s.receive(request(5))
        self.assertEqual(len(handler.held), 1)

    def test_handling_limit_across_links(self):
        handler = HoldingHandler()
        clock = Clock()
        settings = LinkSettings(reactor=clock, max_handling=3)
        f = PaymentFactory(settings, handler)

        from twisted.internet.testing import StringTransport

        links = []
        for i in range(2):
            link = f.buildProtocol(IPv4Address("TCP", "10.0.0.%d" % i, 1))
            t = StringTransport()
            link.makeConnection(t)
            link.dataReceived(frame({"mti": "0800", "nmi": "001", "sender": "P", "stan": "000001", "time": "t"}))
            t.clear()
            links.append((link, t))
        for n in range(2):
            for link, t in links:
                link.dataReceived(frame(request(10 + n)))
        self.assertEqual(len(handler.held), 3)
        self.assertEqual(f.handling, 3)
        answered = [m["resp"] for link, t in links for m in frames(t.value())]
        self.assertEqual(answered, ["91"])

    def test_outbound_limit_is_a_local_error(self):
        p = Pair(paymentHandler=HoldingHandler(), max_in_flight=2)
        p.platform.request({"mti": "0200"})
        p.platform.request({"mti": "0200"})
        e = self.assertRaises(LinkBusy, p.platform.request, {"mti": "0200"})
        self.assertIn("its limit", str(e))
        self.assertEqual(p.platformSettings.stans.inFlight(), 2)

    def test_platform_waits_for_room(self):
        handler = HoldingHandler()
        rig = PoolRig(ports=(7001,), handlers=[handler], max_in_flight=2)
        ds = [rig.service.request(purchase(i + 1)) for i in range(3)]
        rig.flush()
        self.assertEqual(len(handler.held), 2)
        self.assertEqual(len(rig.service.queue), 1)
        held = handler.held.pop(0)
        held.callback({"resp": "00"})
        rig.flush()
        self.assertEqual(self.successResultOf(ds[0])["resp"], "00")
        self.assertEqual(len(handler.held), 2)  # the third went out
        handler.releaseAll()
        rig.flush()
        for d in ds[1:]:
            self.assertEqual(self.successResultOf(d)["resp"], "00")


class OptionTests(SynchronousTestCase):
    def test_limit_options(self):
        config = Options()
        config.parseOptions(
            ["payment", "--listen", "tcp:0", "--ledger", "memory", "--max-links", "7",
             "--max-links-per-peer", "2", "--max-in-flight", "9", "--max-handling", "11",
             "--sign-on-timeout", "4.5", "--max-batch", "5"]
        )
        from twisted.internet.testing import MemoryReactorClock

        from tvlink.cli.tap import makeService

        service = makeService(config, reactor=MemoryReactorClock())
        self.assertEqual((service.factory.max_links, service.factory.max_links_per_peer), (7, 2))
        self.assertEqual(service.factory.sign_on_timeout, 4.5)
        self.assertEqual((service.settings.max_in_flight, service.settings.max_handling), (9, 11))
        self.assertEqual(service.settings.max_batch, 5)

    def test_bad(self):
        for argv, name in [
            (["payment", "--listen", "tcp:0", "--max-links", "0"], "--max-links"),
            (["payment", "--listen", "tcp:0", "--max-links-per-peer", "x"], "--max-links-per-peer"),
            (["platform", "--connect", "h:1", "--max-in-flight", "-3"], "--max-in-flight"),
            (["platform", "--connect", "h:1", "--max-batch", "0"], "--max-batch"),
            (["payment", "--listen", "bogus:1"], "--listen"),
        ]:
            e = self.assertRaises(UsageError, Options().parseOptions, argv)
            self.assertIn(name, str(e))
