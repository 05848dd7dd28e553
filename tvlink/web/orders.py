"""
An order as the platform's journal has it: which purchase decides it
(L{standing}, from the journal), its refunds, the reply that describes them
(L{entryReply}), and the words for a state or response code that a
person reads in an answer (L{stateMessage}).
"""

from tvlink.link import wire
from tvlink.platform.journal import APPROVED, DECLINED, IN_DOUBT, PENDING, REVERSED
from tvlink.web.validation import Reply

#: What each response code means, for the C{message} of an answer.
RESP_TEXT = {
    wire.APPROVED: "approved",
    wire.INVALID_TRANSACTION: "invalid transaction",
    wire.INVALID_AMOUNT: "invalid amount",
    wire.INVALID_CARD: "invalid or unknown card",
    wire.ORIGINAL_NOT_FOUND: "original transaction not found",
    wire.FORMAT_ERROR: "format error",
    wire.INSUFFICIENT_FUNDS: "insufficient funds",
    wire.LATE_RESPONSE: "response received too late",
    wire.DESTINATION_UNAVAILABLE: "payment system unavailable",
    wire.DUPLICATE: "duplicate transmission",
    wire.SYSTEM_MALFUNCTION: "payment system malfunction",
}


def asFen(text):
    """
    The whole fen C{text} gives, or C{None} when it gives none that an
    amount or balance can be: not a whole number, or outside 0 to
    L{wire.MAX_AMOUNT} (12 digits, as the journal and the wire keep them).
    A peer's answer is input like any other; a number too large to
    encode must decline, not stop the answer.
    """
    if isinstance(text, bool):
        return None
    try:
        value = int(text)
    except (TypeError, ValueError):
        return None
    if 0 <= value <= wire.MAX_AMOUNT:
        return value
    return None


def reference(key):
    """
    A request's key (sender, stan, time) as the answers show it.
    """
    return "/".join(key)


def stateMessage(state, resp, kind):
    """
    A sentence for a person on where a C{kind} of request (C{purchase},
    C{refund}) in C{state} with response code C{resp} stands.
    """
    if state == APPROVED:
        return "approved"
    if state == DECLINED:
        return "declined: %s (%s)" % (RESP_TEXT.get(resp, "unknown response code"), resp)
    if state == IN_DOUBT:
        if kind == "refund":
            return (
                "no answer from the payment system in time: the refund is in doubt and is being reversed, "
                "so nothing will be refunded; read the order to see it reversed, then try again"
            )
        return (
            "no answer from the payment system in time: the %s is in doubt and is being reversed, "
            "so the card will not be charged; read the order to see it reversed" % (kind,)
        )
    if state == REVERSED:
        return (
            "reversed: the payment system did not answer in time and the %s was reversed; "
            "the card was not charged" % (kind,)
        )
    if state == PENDING:
        return "in progress: no outcome yet; read the order again shortly"
    return state


def entryReply(entry, refunds=()):
    """
    The reply for a journalled purchase C{entry}.
    """
    state = entry["state"]
    resp = entry["resp"]
    body = {
        "order": entry["order_id"],
        "type": "purchase",
        "state": state,
        "resp": resp,
        "message": stateMessage(state, resp, "purchase"),
        "amount": asFen(entry["amount"]),
        "currency": entry["currency"],
        "card": entry["pan"],
        "reference": reference(entry["key"]),
    }
    if refunds:
        body["refunds"] = [
            {
                "state": r["state"],
                "resp": r["resp"],
                "amount": asFen(r["amount"]),
                "reference": reference(r["key"]),
            }
            for r in refunds
        ]
        body["refunded"] = sum(asFen(r["amount"]) or 0 for r in refunds if r["state"] == APPROVED)
    code = 504 if state in (IN_DOUBT, PENDING) else 200
    return Reply(code, body, state)
