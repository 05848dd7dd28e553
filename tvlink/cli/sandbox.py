"""
The sandbox: both roles in one process, linked over real loopback TCP,
the payment side answering from a SQLite ledger with a few demo accounts.
"""

import os
import shutil
import tempfile

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from tvlink.masking import maskCard as maskPan
from tvlink.payment.accounts import formatFen
from tvlink.payment.errors import DuplicateAccount
from tvlink.payment.ledger import PaymentLedger
from tvlink.payment.service import LedgerPaymentService
from tvlink.platform.service import PlatformService

#: A card the sandbox ledger opens with 1000.00.
DEMO_PAN = "6222020000000000018"

#: The accounts the sandbox opens: (card, opening balance in fen, status).
DEMO_ACCOUNTS = (
    (DEMO_PAN, 100000, "active"),
    ("6222020000000000026", 5000, "active"),
    ("6222020000000000034", 20000, "frozen"),
)


class SandboxService(MultiService):
    """
    A payment node on 127.0.0.1 and a platform linked to it. The payment
    side answers from a L{PaymentLedger} with the L{DEMO_ACCOUNTS} open;
    once the link is ready the platform makes one demo purchase and logs
    the answer, so a newcomer sees a working system from one command.

    @param ledger: the ledger file to use (and keep); by default a fresh
        one in a temporary directory, removed when the service stops.

    @ivar demo: a L{Deferred} firing with the demo purchase's answer
        (C{None} if it failed), new at every start.
    """

    log = Logger(namespace="tvlink.sandbox")

    def __init__(
        self, port=0, sender="PLATFORM", reactor=None, ledger=None, http=None, door=None, access_log=False, **options
    ):
        MultiService.__init__(self)
        self.options = dict(options, reactor=reactor)
        self.platformSender = sender
        self.ledgerPath = ledger
        self._tempDir = None
        # The path is settled when the service starts (see _prepareLedger).
        self.ledger = PaymentLedger(ledger or "sandbox-ledger.db", reactor=reactor)
        self.payment = LedgerPaymentService(
            "tcp:%d:interface=127.0.0.1" % (port,), self.ledger, **self.options
        )
        self.payment.setServiceParent(self)
        self.platform = None
        self.demo = Deferred()
        #: With C{http} (a server endpoint), the terminal API and both
        #: status pages (L{tvlink.web.service.SandboxWeb}); the platform then keeps
        #: its journal next to the ledger; C{door} is its
        #: L{tvlink.web.frontdoor.FrontDoor}.
        self.web = None
        if http is not None:
            from tvlink.web.service import SandboxWeb

            self.web = SandboxWeb(
                http, self.payment, reactor=reactor, demo_card=DEMO_PAN, door=door, access_log=access_log
            )
            self.web.setServiceParent(self)

    def _prepareLedger(self):
        if self.ledgerPath is None and self._tempDir is None:
            self._tempDir = tempfile.mkdtemp(prefix="tvlink-sandbox-")
            self.ledger.path = os.path.join(self._tempDir, "ledger.db")

    def privilegedStartService(self):
        self._prepareLedger()
        MultiService.privilegedStartService(self)

    def startService(self):
        self._prepareLedger()
        if self.demo.called:
            self.demo = Deferred()
        MultiService.startService(self)
        Deferred.fromCoroutine(self._start())

    async def _start(self):
        """
        Open the demo accounts, link the platform once the payment side
        listens, and make the demo purchase once the link is ready.
        """
        try:
            await gatherResults([self._openDemoAccounts(), self.payment.whenListening()], consumeErrors=True)
            self._link()
        except Exception:
            self.log.failure("sandbox could not start", Failure(), sandbox_event="failed")
            if not self.demo.called:
                self.demo.callback(None)
            return
        await self.platform.whenReady()
        await self._demo()

    def _openDemoAccounts(self):
        steps = [
            Deferred.fromCoroutine(self._openDemoAccount(pan, balance, status))
            for pan, balance, status in DEMO_ACCOUNTS
        ]
        d = gatherResults(steps, consumeErrors=True)

        def done(_):
            self.log.info(
                "sandbox ledger {path}: demo cards {cards}",
                sandbox_event="ledger",
                path=self.ledger.path,
                cards=", ".join(
                    "%s (%s, %s)" % (maskPan(pan), formatFen(fen), status)
                    for pan, fen, status in DEMO_ACCOUNTS
                ),
            )

        return d.addCallback(done)

    async def _openDemoAccount(self, pan, balance, status):
        try:
            await self.ledger.openAccount(pan, balance)
        except DuplicateAccount:
            pass  # A kept ledger file from an earlier run.
        if status == "frozen":
            await self.ledger.freeze(pan)

    def _link(self):
        address = self.payment.address()
        options = dict(self.options)
        if self.web is not None:
            options["journal"] = "sqlite:" + os.path.splitext(self.ledger.path)[0] + "-journal.db"
        self.platform = PlatformService([address], sender=self.platformSender, **options)
        self.platform.setServiceParent(self)
        if self.web is not None:
            self.web.attachPlatform(self.platform)

    async def _demo(self):
        """
        Make the demo purchase and log its answer; fire L{demo} with it.
        """
        try:
            answer = await self.platform.request(
                {"mti": "0200", "proc": "000000", "pan": DEMO_PAN, "amount": "%012d" % 1234, "currency": "156"}
            )
        except Exception:
            self.log.warn("sandbox demo purchase failed: {why}", why=Failure().getErrorMessage())
            answer = None
        else:
            self.log.info(
                "sandbox ready: payment on {address}, platform linked; demo purchase of 12.34 answered {resp}",
                address=self.payment.address(),
                resp=answer.get("resp"),
            )
            if self.web is not None:
                self.web.announce()
        if not self.demo.called:
            self.demo.callback(answer)

    def stopService(self):
        d = MultiService.stopService(self)

        def cleanUp(result):
            if self.platform is not None:
                self.removeService(self.platform)
                self.platform = None
            if self._tempDir is not None:
                shutil.rmtree(self._tempDir, ignore_errors=True)
                self._tempDir = None
            return result

        return d.addBoth(cleanUp)
