"""
The payment side's upstream hop: from the link to the account back end.

A L{LedgerHandler} is the L{IMessageHandler} of a payment node. It hands
each request to an L{IAccountBackend} (the local SQLite ledger by default,
or an issuer's host) and times that hop on its own clock: the third rung of
the timeout ladder (30 s by default, below the platform's 40 s).

The one rule of that timeout: the handler never answers C{91} ("not
applied") unless the back end has confirmed that the request did not, and
will not, move money. A back end that does not answer in time is asked to
abandon the request (L{IAbandonableBackend}, as the ledger does) or has its
L{Deferred} cancelled (any other L{IAccountBackend}); what the platform
gets is what the back end then confirms: C{91} if it was not applied, the
real answer if it could no longer be stopped (late, but true), C{96} if
the back end cannot tell. While a back end is stuck applying a request,
nothing is answered for it, however long that takes: the platform's own
timeout runs out and it reverses, which is safe. A back end that fails
gets C{96}.
"""

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from tvlink.link import wire
from tvlink.link.interfaces import IMessageHandler
from tvlink.link.settings import globalReactor, positive

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

        Unless the back end provides L{IAbandonableBackend}, the caller
        cancels the L{Deferred} when its timeout runs out, and answers from
        what the cancellation ends in:

          - L{CancelledError} (the canceller did not fire it): the back end
            thereby confirms that the request has not been applied and
            never will be, and that a repeat of its key is answered C{91}
            too. The caller answers C{91}.
          - an answer fired from the canceller: the request could no
            longer be stopped and this is its real, durable answer. The
            caller passes it on.
          - any other failure from the canceller: the outcome is not known
            yet. The caller answers C{96} (in doubt; the platform
            reverses).

        A back end that cannot confirm any of these at once provides
        L{IAbandonableBackend} instead.
        """


class IAbandonableBackend(IAccountBackend):
    """
    An L{IAccountBackend} that can be asked to give up on a request
    without saying at once how that ended (the ledger, whose writer may be
    in the middle of applying it).
    """

    def abandon(deferred):
        """
        The caller's timeout ran out for the L{Deferred} C{deferred} that
        L{apply} returned; it still waits for it, and answers from it.

        If the request has not started to be applied, the back end makes
        sure it never is: it records it durably as not applied (so a
        repeat of its key gets C{91} too) and only then fires C{deferred}
        with C{{"resp": "91"}}. If it has started, the back end lets it
        finish and fires C{deferred} with its real answer once durable.
        C{deferred} never fires with an answer that is not durable. Does
        nothing if C{deferred} has already fired or is not the back end's.
        """


def _keyText(message):
    return "/".join(str(part) for part in wire.messageKey(message))


@implementer(IMessageHandler)
class LedgerHandler:
    """
    Answer the requests of a payment node from an account back end, within
    C{backend_timeout} seconds when it answers in time, and never with a
    C{91} the back end has not confirmed (see the module docstring).

    @param ledger: the local L{tvlink.payment.ledger.PaymentLedger}, the default
        back end (may be C{None} when C{backend} is given).
    @param backend: an L{IAccountBackend} to use instead of C{ledger}.
    @param backend_timeout: seconds to wait for the back end before asking
        it to abandon (or cancelling) the request.
    @param reactor: the clock for that timeout (the global reactor when
        C{None}).

    @ivar counters: C{forwarded}, C{answered} (with the back end's answer,
        in time or late), C{late} (of those, answered after the timeout:
        the request was already being applied), C{timedOut} (answered
        C{91}: the back end confirmed it was not applied) and C{failed}
        (answered C{96}).
    """

    log = Logger(namespace="tvlink.backend")

    def __init__(self, ledger, backend=None, backend_timeout=DEFAULT_BACKEND_TIMEOUT, reactor=None):
        self.ledger = ledger
        self.backend = backend if backend is not None else ledger
        if self.backend is None:
            raise ValueError("LedgerHandler needs a ledger or a back end")
        self.backend_timeout = positive("backend_timeout", backend_timeout)
        self._reactor = reactor
        self.counters = {"forwarded": 0, "answered": 0, "late": 0, "timedOut": 0, "failed": 0}

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
        try:
            result = self.backend.apply(message)
        except BaseException:
            d = fail()
        else:
            d = result if isinstance(result, Deferred) else succeed(result)

        def expire():
            expired.append(True)
            abandon = getattr(self.backend, "abandon", None)
            if IAbandonableBackend.providedBy(self.backend) and callable(abandon):
                self.log.warn(
                    "back end gave no answer to {mti} {key} within {timeout}s; asked it to abandon"
                    " the request; answering once it says how it ended",
                    backend_event="abandon",
                    mti=message.get("mti"),
                    key=_keyText(message),
                    timeout=self.backend_timeout,
                )
                try:
                    abandon(d)
                except Exception:
                    # Wait on: only the back end knows whether it moved money.
                    self.log.failure(
                        "back end failed to abandon {mti} {key}; still waiting for its answer",
                        backend_event="abandon-failed",
                        mti=message.get("mti"),
                        key=_keyText(message),
                    )
            else:
                d.cancel()

        timer = self.reactor.callLater(self.backend_timeout, expire)

        def settled(result):
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(settled)
        d.addCallbacks(self._answered, self._failed, (message, expired), None, (message, expired))
        return d

    def _answered(self, answer, message, expired):
        if not isinstance(answer, dict) or type(answer.get("resp")) is not str:
            self.counters["failed"] += 1
            self.log.error(
                "back end gave no response code for {mti} {key}; answering 96",
                backend_event="no-resp",
                mti=message.get("mti"),
                key=_keyText(message),
            )
            return {"resp": wire.SYSTEM_MALFUNCTION}
        if expired:
            if answer["resp"] == wire.DESTINATION_UNAVAILABLE:
                return self._notApplied(message, "has recorded it as not applied")
            self.counters["late"] += 1
            self.log.warn(
                "back end answered {mti} {key} {resp} after the {timeout}s timeout (it was already"
                " being applied); passing on its real answer",
                backend_event="late",
                mti=message.get("mti"),
                key=_keyText(message),
                resp=answer["resp"],
                timeout=self.backend_timeout,
            )
        self.counters["answered"] += 1
        return answer

    def _notApplied(self, message, how):
        """
        The back end timed out on C{message} and C{how} it made sure it did
        not apply it: answer 91.
        """
        self.counters["timedOut"] += 1
        self.log.warn(
            "back end gave no answer to {mti} {key} within {timeout}s and {how}; answering 91",
            backend_event="timeout",
            mti=message.get("mti"),
            key=_keyText(message),
            timeout=self.backend_timeout,
            how=how,
        )
        return {"resp": wire.DESTINATION_UNAVAILABLE}

    def _failed(self, failure, message, expired):
        if expired and failure.check(CancelledError):
            # The back end let the cancellation stand: by the contract of
            # IAccountBackend.apply it confirms nothing moved.
            return self._notApplied(message, "confirmed it was not applied")
        self.counters["failed"] += 1
        self.log.failure(
            "back end failed on {mti} {key}; answering 96",
            failure,
            backend_event="failed",
            mti=message.get("mti"),
            key=_keyText(message),
        )
        return {"resp": wire.SYSTEM_MALFUNCTION}
