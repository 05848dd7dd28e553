"""
Tests for L{tvlink.testing.pipe}: one proxied connection whose two sides
are L{StringTransport}s on a L{MemoryReactorClock}, so delays run on the
test's clock and backpressure is seen on the transports.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tvlink.testing.faultproxy import FaultProxy


class HalfCloseTransport(StringTransport):
    """
    A L{StringTransport} that can close its write side.
    """

    writeClosed = False

    def loseWriteConnection(self):
        self.writeClosed = True


class MemoryConnection:
    """
    A L{FaultProxy} on a L{MemoryReactorClock} with one client accepted
    and, unless told otherwise, its target connected.
    """

    def __init__(self, connectTarget=True):
        self.clock = MemoryReactorClock()
        self.proxy = FaultProxy("10.0.0.2", 7000, reactor=self.clock)
        self.proxy.start()
        [(_, factory, _, _)] = self.clock.tcpServers
        self.client = factory.buildProtocol(IPv4Address("TCP", "10.0.0.3", 40000))
        self.clientTransport = HalfCloseTransport()
        self.client.makeConnection(self.clientTransport)
        self.target = self.targetTransport = None
        if connectTarget:
            self.connectTarget()

    def connectTarget(self):
        factory = self.clock.tcpClients[-1][2]
        self.target = factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 7000))
        self.targetTransport = HalfCloseTransport()
        self.target.makeConnection(self.targetTransport)

    def up(self, data):
        """
        The client sends C{data}; what has reached the target so far.
        """
        self.client.dataReceived(data)
        return self.targetTransport.value()


class PipeTests(SynchronousTestCase):
    def test_passBothWays(self):
        rig = MemoryConnection()
        self.assertEqual(rig.up(b"ping"), b"ping")
        rig.target.dataReceived(b"pong")
        self.assertEqual(rig.clientTransport.value(), b"pong")
        self.assertEqual((rig.proxy.bytesUp, rig.proxy.bytesDown), (4, 4))

    def test_clientWaitsForTarget(self):
        """
        The client is not read from until the target is connected.
        """
        rig = MemoryConnection(connectTarget=False)
        self.assertEqual(rig.client.held, frozenset(["connecting"]))
        self.assertEqual(rig.clientTransport.producerState, "paused")
        rig.connectTarget()
        self.assertEqual(rig.client.held, frozenset())
        self.assertEqual(rig.clientTransport.producerState, "producing")

    def test_delayRunsOnTheClock(self):
        rig = MemoryConnection()
        rig.proxy.setMode("delay", seconds=2)
        self.assertEqual(rig.up(b"a"), b"")
        rig.clock.advance(1.9)
        self.assertEqual(rig.targetTransport.value(), b"")
        rig.clock.advance(0.1)
        self.assertEqual(rig.targetTransport.value(), b"a")
        self.assertEqual(rig.clock.getDelayedCalls(), [])

    def test_shorterDelayKeepsOrder(self):
        rig = MemoryConnection()
        rig.proxy.setMode("delay", seconds=2)
        rig.up(b"a")
        rig.proxy.setMode("delay", seconds=0.5)
        rig.up(b"b")
        rig.clock.advance(0.5)
        self.assertEqual(rig.targetTransport.value(), b"")
        rig.clock.advance(1.5)
        self.assertEqual(rig.targetTransport.value(), b"ab")

    def test_passFlushes(self):
        rig = MemoryConnection()
        rig.proxy.setMode("delay", seconds=5)
        rig.up(b"held")
        rig.proxy.setMode("pass")
        self.assertEqual(rig.targetTransport.value(), b"held")
        self.assertEqual(rig.clock.getDelayedCalls(), [])

    def test_drop(self):
        rig = MemoryConnection()
        rig.proxy.setMode("drop", direction="up")
        self.assertEqual(rig.up(b"lost"), b"")
        rig.target.dataReceived(b"kept")
        self.assertEqual(rig.clientTransport.value(), b"kept")
        self.assertEqual(rig.proxy.bytesDropped, 4)

    def test_fullQueuePausesTheSender(self):
        rig = MemoryConnection()
        rig.proxy.highWater = 8
        rig.proxy.setMode("delay", seconds=1)
        rig.up(b"0123456789")
        self.assertEqual(rig.client.held, frozenset(["queue-full"]))
        self.assertEqual(rig.clientTransport.producerState, "paused")
        self.assertEqual(rig.proxy.pauses, 1)
        rig.clock.advance(1)
        self.assertEqual(rig.targetTransport.value(), b"0123456789")
        self.assertEqual(rig.clientTransport.producerState, "producing")

    def test_fullSinkPausesTheSender(self):
        """
        The pipe is the producer of its sink's transport: a full send
        buffer toward the target pauses the client, and its draining lets
        the client go on.
        """
        rig = MemoryConnection()
        pipe = rig.targetTransport.producer
        pipe.pauseProducing()
        self.assertEqual(rig.client.held, frozenset(["sink-full"]))
        self.assertEqual(rig.clientTransport.producerState, "paused")
        pipe.resumeProducing()
        self.assertEqual(rig.clientTransport.producerState, "producing")

    def test_halfclose(self):
        rig = MemoryConnection()
        rig.proxy.setMode("halfclose")
        self.assertTrue(rig.clientTransport.writeClosed)
        self.assertFalse(rig.targetTransport.writeClosed)
        rig.target.dataReceived(b"unheard")
        self.assertEqual(rig.clientTransport.value(), b"")
        self.assertEqual(rig.up(b"heard"), b"heard")

    def test_reset(self):
        rig = MemoryConnection()
        rig.proxy.setMode("reset")
        self.assertTrue(rig.clientTransport.disconnected)
        self.assertTrue(rig.targetTransport.disconnected)
