"""
Messages and a real-reactor test case for the ledger's tests, shared by
the ledger, admin and money tests.
"""

import threading

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher

from tests.processes import ReactorTestCase
from tvlink.payment.ledger import PaymentLedger

PAN = "6222020000000000018"


OTHER = "6222020000000000026"


WHEN = "1125120000"


def getReactor():
    from twisted.internet import reactor

    return reactor


class RealReactorTestCase(ReactorTestCase):
    """
    A test on the real reactor (the ledger's writer thread answers
    through it), under trial and under pytest.
    """

    timeout = 20

    def newLedger(self, path=None, opening=((PAN, 10000),), **kwargs):
        """
        An open ledger in a fresh file, with accounts C{opening}, closed
        in cleanup.
        """
        ledger = PaymentLedger(path or self.mktemp() + ".db", **kwargs)
        ledger.open()
        self.addCleanup(ledger.close)
        return defer.gatherResults(
            [ledger.openAccount(pan, fen) for pan, fen in opening]
        ).addCallback(lambda _: ledger)

    def holdWriter(self, ledger):
        """
        Hold C{ledger}'s writer inside its next transaction, after every
        piece of its batch has been applied and before C{COMMIT}.

        @return: C{(reached, release)}: a L{Deferred} firing (on the
            reactor) with the batch once the writer is held there, and a
            callable letting it commit.
        """
        reactor = getReactor()
        gate = threading.Event()
        reached = Deferred()

        def hook(batch):
            ledger._beforeCommit = None
            reactor.callFromThread(reached.callback, batch)
            gate.wait(10)

        ledger._beforeCommit = hook
        self.addCleanup(gate.set)
        return reached, gate.set

    def blockWriter(self, ledger):
        """
        Keep C{ledger}'s writer busy with a piece of work of its own until
        released, so that what is submitted next waits, not started.

        @return: C{(busy, release)}: the L{Deferred} of that work, and a
            callable ending it.
        """
        gate = threading.Event()
        self.addCleanup(gate.set)
        return ledger._submit(lambda store, now, work: gate.wait(10)), gate.set

    def captureLog(self):
        """
        Every log event text from now until the test ends.
        """
        lines = []

        def observe(event):
            lines.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines


def message(mti, proc, stan, **fields):
    m = {"mti": mti, "sender": "PLATFORM", "stan": stan, "time": WHEN}
    if proc is not None:
        m["proc"] = proc
    m.update(fields)
    return m


def origOf(m):
    return {"mti": m["mti"], "sender": m["sender"], "stan": m["stan"], "time": m["time"]}


def purchase(stan, fen, pan=PAN):
    return message("0200", "000000", stan, pan=pan, amount="%012d" % (fen,), currency="156")


def refund(stan, original, fen, pan=PAN):
    return message("0220", "200000", stan, pan=pan, amount="%012d" % (fen,), orig=origOf(original))


def reversal(stan, original):
    return message("0420", None, stan, orig=origOf(original))


def balanceInquiry(stan, pan=PAN):
    return message("0200", "300000", stan, pan=pan)


def statusInquiry(stan, original):
    return message("0200", "330000", stan, orig=origOf(original))
