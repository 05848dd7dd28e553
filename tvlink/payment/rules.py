"""
The ledger's rules: what a request does to the accounts and the journal.

L{applyMessage} decides one request, per WIRE.md, inside its caller's
transaction: every request of type C{0200}, C{0220} or C{0420} is
journalled under its key (sender, stan, time) with its answer and a
fingerprint of its content, so a repeat gets exactly the first answer and
the same key with other content gets C{94}. A purchase's reversal may
come before the purchase: it is journalled all the same, and the purchase
is then declined. A refund is bounded by what is left of its purchase; a
reversal undoes what its original moved (L{undo}).

The rules hold no SQL: they read and write through a
L{tvlink.store.ledgersql.LedgerStore}, whatever database is under it.
Nothing here begins or ends a transaction, starts a thread or logs: the
writer (L{tvlink.payment.ledger.PaymentLedger}) does, with the log events
an L{Outcome} carries.
"""

import json
import time

from tvlink.link import wire
from tvlink.masking import maskCard as maskPan

#: Journal states. A purchase ends approved, refunded (wholly or partly),
#: declined or reversed; every other request approved or declined.
APPROVED = "approved"
DECLINED = "declined"
REVERSED = "reversed"
REFUNDED = "refunded"
UNKNOWN = "unknown"

#: Account statuses: purchases on a frozen account are declined C{14}.
ACTIVE = "active"
FROZEN = "frozen"

#: Processing codes.
PURCHASE = "000000"
REFUND = "200000"
BALANCE = "300000"
STATUS = "330000"

#: Journalled request types; other MTIs are answered without a trace.
JOURNALLED = ("0200", "0220", "0420")


def wallclockText(seconds):
    """
    An ISO 8601 UTC timestamp for a record (never used for deadlines).
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class Outcome:
    """
    What applying one request came to.

    @ivar answer: the answer C{dict}.
    @ivar key: the request's key.
    @ivar events: log events, emitted later on the reactor thread, as
        C{(level, format, fields)}.
    """

    __slots__ = ("answer", "key", "events")

    def __init__(self, answer, key=None, events=()):
        self.answer = answer
        self.key = key
        self.events = list(events)


def normalKey(key):
    """
    C{key} as the journal keeps it: a missing time is C{""}.
    """
    sender, stan, when = key
    return (sender, stan, "" if when is None else when)


def _origKey(message):
    """
    The key of C{message["orig"]}, or C{None} if it is missing or not
    usable.
    """
    orig = message.get("orig")
    if not isinstance(orig, dict):
        return None
    sender, stan, when = orig.get("sender"), orig.get("stan"), orig.get("time", "")
    if not (isinstance(sender, str) and sender and isinstance(stan, str) and stan and isinstance(when, str)):
        return None
    return (sender, stan, when)


def _amount(value):
    """
    A wire amount (12 digits, not zero) as an C{int}, or C{None}.
    """
    if isinstance(value, str) and len(value) == 12 and value.isascii() and value.isdigit():
        amount = int(value)
        if amount > 0:
            return amount
    return None


def _fingerprint(message):
    """
    What makes two requests under one key the same request.
    """
    orig = message.get("orig")
    origKey = None
    if isinstance(orig, dict):
        origKey = [orig.get("mti"), orig.get("sender"), orig.get("stan"), orig.get("time")]
    fields = [message.get(name) for name in ("mti", "proc", "pan", "amount", "currency")]
    return json.dumps(fields + [origKey], default=repr, separators=(",", ":"))


def _event(level, format, **fields):
    fields.setdefault("ledger_event", level)
    return (level, format, fields)


def applyMessage(store, message, now, cancelled=False):
    """
    Apply request C{message} inside the caller's transaction on C{store}.

    @param now: the wall-clock timestamp text to record.
    @param cancelled: the caller abandoned it before the writer started
        it: a purchase or refund is then journalled as C{91} and not
        applied, so a repeat is answered C{91} too (other requests are
        applied as usual).
    @return: an L{Outcome}.
    """
    mti = message.get("mti")
    if mti == "0820":
        return Outcome({"resp": wire.APPROVED})
    if mti not in JOURNALLED:
        return Outcome(
            {"resp": wire.INVALID_TRANSACTION},
            events=[_event("info", "ledger: message type {mti} not supported; answered 12", mti=mti)],
        )
    sender, stan, when = message.get("sender"), message.get("stan"), message.get("time", "")
    if not (isinstance(sender, str) and isinstance(stan, str) and isinstance(when, str)):
        return Outcome({"resp": wire.FORMAT_ERROR})
    key = (sender, stan, when)
    fingerprint = _fingerprint(message)
    recorded = store.recorded(key)
    if recorded is not None:
        if recorded[0] == fingerprint:
            return Outcome(recorded[1], key)
        return Outcome(
            {"resp": wire.DUPLICATE},
            key,
            events=[
                _event(
                    "warn",
                    "ledger: {key} reused for a different {mti} request; answered 94",
                    key="/".join(key),
                    mti=mti,
                )
            ],
        )
    entry = _Entry(store, message, key, now)
    proc = message.get("proc")
    if mti == "0420":
        entry.reversal()
    elif cancelled and ((mti == "0200" and proc == PURCHASE) or (mti == "0220" and proc == REFUND)):
        entry.decline(wire.DESTINATION_UNAVAILABLE, "abandoned by the caller before it was applied")
    elif mti == "0220":
        if proc == REFUND:
            entry.refund()
        else:
            entry.decline(wire.INVALID_TRANSACTION, "0220 with processing code %r" % (proc,))
    elif proc == PURCHASE:
        entry.purchase()
    elif proc == BALANCE:
        entry.balanceInquiry()
    elif proc == STATUS:
        entry.statusInquiry()
    else:
        entry.decline(wire.INVALID_TRANSACTION, "0200 with processing code %r" % (proc,))
    entry.record(fingerprint)
    return Outcome(entry.answer, key, entry.events)


class _Entry:
    """
    One request being decided and journalled, in the writer's transaction.
    """

    def __init__(self, store, message, key, now):
        self.store = store
        self.message = message
        self.key = key
        self.now = now
        self.pan = message.get("pan") if isinstance(message.get("pan"), str) else None
        self.amount = _amount(message.get("amount"))
        self.orig = _origKey(message)
        self.answer = None
        self.state = None
        self.events = []

    # outcomes

    def approve(self, **fields):
        self.answer = dict(fields, resp=wire.APPROVED)
        self.state = APPROVED

    def decline(self, resp, reason, state=DECLINED):
        self.answer = {"resp": resp}
        self.state = state
        self.events.append(
            _event(
                "info",
                "ledger: {mti}/{proc} {key} card {pan} declined {resp}: {reason}",
                mti=self.message.get("mti"),
                proc=self.message.get("proc"),
                key="/".join(self.key),
                pan=maskPan(self.pan),
                resp=resp,
                reason=reason,
            )
        )

    def record(self, fingerprint):
        message = self.message
        orig = message.get("orig")
        origMti = orig.get("mti") if isinstance(orig, dict) and isinstance(orig.get("mti"), str) else None
        order = message.get("order")
        self.store.record(
            self.key,
            message["mti"],
            message.get("proc") if isinstance(message.get("proc"), str) else None,
            self.pan,
            self.amount,
            order if isinstance(order, str) else None,
            origMti,
            self.orig or (None, None, None),
            self.state,
            self.answer,
            fingerprint,
            self.now,
        )

    # helpers

    def _money(self):
        """
        Check the card and amount fields of a purchase or refund; decline
        and return C{False} when they fail.
        """
        message = self.message
        if self.pan is None or not self.pan or not isinstance(message.get("amount"), str):
            self.decline(wire.FORMAT_ERROR, "card number or amount missing")
            return False
        if self.amount is None:
            self.decline(wire.INVALID_AMOUNT, "amount is not 12 digits of fen above zero")
            return False
        currency = message.get("currency", "156")
        if currency != "156":
            self.decline(wire.INVALID_AMOUNT, "currency %r is not 156" % (currency,))
            return False
        if self.store.reversalRecorded(self.key):
            self.decline(
                wire.INVALID_TRANSACTION, "its reversal arrived first; not applied", state=REVERSED
            )
            return False
        return True

    # the request types

    def purchase(self):
        if not self._money():
            return
        account = self.store.balanceAndStatus(self.pan)
        if account is None:
            self.decline(wire.INVALID_CARD, "no such account")
            return
        balance, status = account
        if status != ACTIVE:
            self.decline(wire.INVALID_CARD, "account is %s" % (status,))
            return
        if balance < self.amount:
            self.decline(wire.INSUFFICIENT_FUNDS, "balance below the amount")
            return
        self.store.credit(self.pan, -self.amount)
        self.approve()

    def refund(self):
        if self.orig is None:
            self.decline(wire.FORMAT_ERROR, "refund without a usable orig")
            return
        if not self._money():
            return
        original = self.store.original(self.orig)
        if original is None:
            self.decline(wire.ORIGINAL_NOT_FOUND, "original %s not found" % ("/".join(self.orig),))
            return
        oid, mti, proc, pan, amount, state, refunded = original[:7]
        if mti != "0200" or proc != PURCHASE:
            self.decline(wire.ORIGINAL_NOT_FOUND, "original %s is not a purchase" % ("/".join(self.orig),))
            return
        if state not in (APPROVED, REFUNDED):
            self.decline(wire.INVALID_TRANSACTION, "original purchase is %s" % (state,))
            return
        if pan != self.pan:
            self.decline(wire.INVALID_TRANSACTION, "original purchase was on another card")
            return
        if self.amount > amount - refunded:
            self.decline(
                wire.INVALID_AMOUNT,
                "refund of %d fen exceeds the %d fen left of the purchase" % (self.amount, amount - refunded),
            )
            return
        self.store.credit(pan, self.amount)
        self.store.addRefunded(oid, self.amount, REFUNDED)
        self.approve()

    def balanceInquiry(self):
        if self.pan is None or not self.pan:
            self.decline(wire.FORMAT_ERROR, "card number missing")
            return
        balance = self.store.balance(self.pan)
        if balance is None:
            self.decline(wire.INVALID_CARD, "no such account")
            return
        # A forced reversal can leave a balance below zero; the wire has
        # 12 unsigned digits, so it shows as zero.
        self.approve(balance="%012d" % (max(balance, 0),))

    def statusInquiry(self):
        if self.orig is None:
            self.decline(wire.FORMAT_ERROR, "status inquiry without a usable orig")
            return
        self.approve(state=stateOf(self.store, self.orig))

    def reversal(self):
        if self.orig is None:
            self.decline(wire.FORMAT_ERROR, "reversal without a usable orig")
            return
        original = self.store.original(self.orig)
        origText = "/".join(self.orig)
        if original is None:
            # The reversal overtook its original: this row is the
            # tombstone that declines the original should it come later.
            self.events.append(
                _event(
                    "info",
                    "ledger: reversal {key} of {orig}, never seen: acknowledged without moving money;"
                    " the original will be declined if it arrives",
                    key="/".join(self.key),
                    orig=origText,
                )
            )
        else:
            self.events.extend(undo(self.store, original, self.orig))
        self.approve()


def undo(store, original, key):
    """
    Undo the journalled request C{original} (a row as
    L{LedgerStore.original<tvlink.store.ledgersql.LedgerStore.original>}
    reads it, under C{key}) if it moved money and still stands: an
    approved purchase is credited back less its refunds, which are
    reversed with it; an approved refund is debited back, even below zero
    (a reversal is a forced posting). Anything else is left as it is.

    @return: log events.
    """
    oid, mti, proc, pan, amount, state, refunded, origSender, origStan, origTime = original
    origText = "/".join(key)
    events = []
    if mti == "0200" and proc == PURCHASE and state in (APPROVED, REFUNDED):
        store.credit(pan, amount - refunded)
        store.setState(oid, REVERSED, clearRefunded=True)
        if refunded:
            store.setRefundsState(key, APPROVED, REVERSED)
        events.append(
            _event(
                "info",
                "ledger: purchase {orig} on card {pan} reversed: {fen} fen back",
                orig=origText,
                pan=maskPan(pan),
                fen=amount - refunded,
            )
        )
    elif mti == "0220" and state == APPROVED:
        store.credit(pan, -amount)
        store.setState(oid, REVERSED)
        if origSender is not None:
            store.takeBackRefund((origSender, origStan, origTime), amount, REFUNDED, APPROVED)
        balance = store.balance(pan)
        events.append(
            _event(
                "info",
                "ledger: refund {orig} on card {pan} reversed: {fen} fen taken back",
                orig=origText,
                pan=maskPan(pan),
                fen=amount,
            )
        )
        if balance is not None and balance < 0:
            events.append(
                _event(
                    "warn",
                    "ledger: card {pan} is {fen} fen overdrawn after reversing refund {orig}",
                    pan=maskPan(pan),
                    fen=-balance,
                    orig=origText,
                )
            )
    else:
        events.append(
            _event(
                "info",
                "ledger: reversal of {orig} ({mti}, {state}): nothing to undo",
                orig=origText,
                mti=mti,
                state=state,
            )
        )
    return events


def stateOf(store, key):
    """
    What became of the request C{key}: C{approved}, C{declined},
    C{reversed}, C{refunded}, or C{unknown} if it was never seen (but
    C{reversed} if its reversal was).
    """
    key = normalKey(key)
    state = store.state(key)
    if state is not None:
        return state
    return REVERSED if store.reversalRecorded(key) else UNKNOWN
