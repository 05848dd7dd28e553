"""
The payment side's upstream hop: from the link to the account back end.

A L{LedgerHandler} is the L{IMessageHandler} of a payment node. It hands
each request to an L{IAccountBackend} (the local SQLite ledger by default,
or an issuer's host) and times that hop on its own clock: the third rung of
the timeout ladder (30 s by default, below the platform's 40 s). A back end
that does not answer in time gets its request cancelled and the platform
gets C{91}; a back end that fails gets C{96}.
"""

from twisted.internet.defer import CancelledError, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from tvlink import wire
from tvlink.link import IMessageHandler, globalReactor, positive

#: The default budget of the payment -> back end hop (WIRE.md).
DEFAULT_BACKEND_TIMEOUT = 30.0


class IAccountBackend(Interface):
    """
    Where a payment node's money actually moves: an issuer or account
    system.
    """

    def apply(message):
        """
        Apply request C{message} (a C{dict}: C{0200}, C{0220}, C{0420},
        C{0820}) idempotently by its key (C{sender}, C{stan}, C{time}).

        @return: a L{Deferred} firing with the answer C{dict} (at least
            C{resp}), and only once the outcome is durable.

        The caller cancels the L{Deferred} when its timeout runs out and
        answers C{91}. A back end must then see to it that the request
        does not stand: either it is not applied (and a repeat of its key
        is answered C{91} too), or, if it can no longer be stopped, the
        L{Deferred} fires with the real answer from the canceller.
        """


def _keyText(message):
    return "/".join(str(part) for part in wire.messageKey(message))


@implementer(IMessageHandler)
class LedgerHandler:
    """
    Answer the requests of a payment node from an account back end, within
    C{backend_timeout} seconds.

    @param ledger: the local L{tvlink.ledger.PaymentLedger}, the default
        back end (may be C{None} when C{backend} is given).
    @param backend: an L{IAccountBackend} to use instead of C{ledger}.
    @param backend_timeout: seconds to wait for the back end.
    @param reactor: the clock for that timeout (the global reactor when
        C{None}).

    @ivar counters: C{forwarded}, C{answered}, C{timedOut} (answered
        C{91}) and C{failed} (answered C{96}).
    """

    log = Logger(namespace="tvlink.backend")

    def __init__(self, ledger, backend=None, backend_timeout=DEFAULT_BACKEND_TIMEOUT, reactor=None):
        self.ledger = ledger
        self.backend = backend if backend is not None else ledger
        if self.backend is None:
            raise ValueError("LedgerHandler needs a ledger or a back end")
        self.backend_timeout = positive("backend_timeout", backend_timeout)
        self._reactor = reactor
        self.counters = {"forwarded": 0, "answered": 0, "timedOut": 0, "failed": 0}

    @property
    def reactor(self):
        if self._reactor is None:
            self._reactor = globalReactor()
        return self._reactor

    def handle(self, message):
        """
        Answer C{message}: C{0820} notifications here, everything else from
        the back end.
        """
        if message.get("mti") == "0820":
            return succeed({"resp": wire.APPROVED})
        self.counters["forwarded"] += 1
        expired = []

        def expire():
            expired.append(True)
            d.cancel()

        d = maybeDeferred(self.backend.apply, message)
        timer = self.reactor.callLater(self.backend_timeout, expire)

        def settled(result):
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(settled)
        d.addCallbacks(self._answered, self._failed, (message,), None, (message, expired))
        return d

    def _answered(self, answer, message):
        if not isinstance(answer, dict) or type(answer.get("resp")) is not str:
            self.counters["failed"] += 1
            self.log.error(
                "back end gave no response code for {mti} {key}; answering 96",
                backend_event="no-resp",
                mti=message.get("mti"),
                key=_keyText(message),
            )
            return {"resp": wire.SYSTEM_MALFUNCTION}
        self.counters["answered"] += 1
        return answer

    def _failed(self, failure, message, expired):
        if expired and failure.check(CancelledError):
            self.counters["timedOut"] += 1
            self.log.warn(
                "back end gave no answer to {mti} {key} within {timeout}s; answering 91",
                backend_event="timeout",
                mti=message.get("mti"),
                key=_keyText(message),
                timeout=self.backend_timeout,
            )
            return {"resp": wire.DESTINATION_UNAVAILABLE}
        self.counters["failed"] += 1
        self.log.failure(
            "back end failed on {mti} {key}; answering 96",
            failure,
            backend_event="failed",
            mti=message.get("mti"),
            key=_keyText(message),
        )
        return {"resp": wire.SYSTEM_MALFUNCTION}
