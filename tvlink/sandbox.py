"""
The sandbox: both roles in one process, linked over real loopback TCP.
"""

from twisted.application.service import MultiService
from twisted.logger import Logger

from tvlink.payment import DemoHandler, PaymentService
from tvlink.platform import PlatformService

#: A card the demo handler approves.
DEMO_PAN = "6222020000000000018"


class SandboxService(MultiService):
    """
    A payment node on 127.0.0.1 and a platform linked to it. Once the link
    is ready it makes one demo purchase and logs the answer, so a newcomer
    sees a working system from one command.
    """

    log = Logger(namespace="tvlink.sandbox")

    def __init__(self, port=0, sender="PLATFORM", reactor=None, **options):
        MultiService.__init__(self)
        self.options = dict(options, reactor=reactor)
        self.platformSender = sender
        self.payment = PaymentService(
            "tcp:%d:interface=127.0.0.1" % (port,), handler=DemoHandler(), **self.options
        )
        self.payment.setServiceParent(self)
        self.platform = None

    def startService(self):
        MultiService.startService(self)
        self.payment.whenListening().addCallback(self._link)

    def _link(self, port):
        address = self.payment.address()
        self.platform = PlatformService([address], sender=self.platformSender, **self.options)
        self.platform.setServiceParent(self)
        self.platform.whenReady().addCallback(self._demo)

    def _demo(self, link):
        d = self.platform.request(
            {"mti": "0200", "proc": "000000", "pan": DEMO_PAN, "amount": "%012d" % 1234, "currency": "156"}
        )

        def answered(answer):
            self.log.info(
                "sandbox ready: payment on {address}, platform linked; demo purchase of 12.34 answered {resp}",
                address=self.payment.address(),
                resp=answer.get("resp"),
            )

        def failed(failure):
            self.log.warn("sandbox demo purchase failed: {why}", why=failure.getErrorMessage())

        d.addCallbacks(answered, failed)
        return d
