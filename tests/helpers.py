"""
Test helpers: linked platform/payment pairs on a Clock, with no sockets.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim

from tvlink.link import LinkSettings
from tvlink.payment import DemoHandler, PaymentFactory
from tvlink.platform import PlatformFactory, PlatformHandler


class Pair:
    """
    A platform link and a payment link joined by an iosim pump, sharing
    one Clock.
    """

    def __init__(
        self,
        clock=None,
        paymentHandler=None,
        platformHandler=None,
        paymentFactoryClass=PaymentFactory,
        **options
    ):
        self.clock = clock if clock is not None else Clock()
        options.setdefault("reactor", self.clock)
        paymentOptions = dict(options, sender=options.pop("paymentSender", "PAYMENT"))
        paymentOptions.pop("platformSender", None)
        platformOptions = dict(options, sender=options.pop("platformSender", "PLATFORM"))
        self.paymentSettings = LinkSettings(**paymentOptions)
        self.platformSettings = LinkSettings(**platformOptions)
        self.paymentFactory = paymentFactoryClass(
            self.paymentSettings, paymentHandler if paymentHandler is not None else DemoHandler()
        )
        self.platformFactory = PlatformFactory(
            "127.0.0.1:7000",
            self.platformSettings,
            platformHandler if platformHandler is not None else PlatformHandler(),
            random=lambda: 1.0,
        )
        self.payment = self.paymentFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
        self.platform = self.platformFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
        self.paymentTransport = iosim.makeFakeServer(self.payment)
        self.platformTransport = iosim.makeFakeClient(self.platform)
        self.pump = iosim.connect(
            self.payment,
            self.paymentTransport,
            self.platform,
            self.platformTransport,
            greet=True,
            clock=self.clock,
        )

    def flush(self):
        self.pump.flush(advanceClock=False)

    def advance(self, seconds, step=None):
        """
        Move the clock forward C{seconds}, pumping bytes at every C{step}.
        """
        step = step or seconds
        elapsed = 0.0
        while elapsed < seconds:
            delta = min(step, seconds - elapsed)
            self.clock.advance(delta)
            elapsed += delta
            self.flush()
