"""
Exceptions raised by tvlink. Each says in words what went wrong.
"""


class TVLinkError(Exception):
    """
    Base class of every tvlink error.
    """


class ProtocolViolation(TVLinkError):
    """
    The peer broke the framing rules; the link it came in on is closed.
    """


class CodecError(TVLinkError):
    """
    A frame body is not a valid message.
    """


class StanExhausted(TVLinkError):
    """
    Every STAN of a sender is in flight.
    """


class RequestError(TVLinkError):
    """
    A request did not get an answer.
    """


class RequestTimeout(RequestError):
    """
    No answer arrived within the request's timeout.

    @ivar key: the request's correlation key (sender, stan, time).
    @ivar timeout: the timeout in seconds.
    """

    def __init__(self, key, timeout, detail=""):
        self.key = key
        self.timeout = timeout
        self.detail = detail
        message = "no answer to request %s within %gs" % ("/".join(map(str, key)), timeout)
        if detail:
            message += "; " + detail
        RequestError.__init__(self, message)


class LinkLost(RequestError):
    """
    The link a request was sent on was lost before the answer came.
    """


class LinkNotReady(RequestError):
    """
    The link is not signed on (or is closing); nothing was sent.
    """


class LinkBusy(RequestError):
    """
    The link already has as many requests in flight as its limit allows;
    nothing was sent.
    """


class NoLinkAvailable(RequestError):
    """
    No payment link was ready to take the request; nothing was sent.
    """


class DuplicateKey(RequestError):
    """
    A request with the same (sender, stan, time) is already in flight;
    the second one was refused before it was sent.
    """


class OrderDecided(RequestError):
    """
    A purchase for an order that a purchase already sent decides: nothing
    was journalled or sent. C{entries} are the order's journal entries,
    oldest first.
    """

    def __init__(self, entries):
        RequestError.__init__(self, "the order is decided by a purchase already sent")
        self.entries = entries


class OrderTaken(OrderDecided):
    """
    A purchase of the same merchant order stands in the journal already,
    journalled (on a journal several processes share, at the same moment)
    where this transaction could not see it: this one was not sent. Its
    C{entries} are empty; read them with the journal's C{byOrder}.

    @ivar order: the order.
    """

    def __init__(self, order):
        OrderDecided.__init__(self, [])
        self.args = ("a purchase of order %s is already journalled; this one was not sent" % (order,),)
        self.order = order


class JournalUnavailable(RequestError):
    """
    The journal's database could not be reached to journal a purchase or
    refund, so it was not sent.
    """


class SignOnRefused(TVLinkError):
    """
    The payment side answered the sign-on with a code other than C{00}.
    """


class InDoubt(RequestError):
    """
    A money-moving request was sent and no answer came: the payment side
    may or may not have applied it. The platform has journalled it as in
    doubt and is reversing it; ask the service for its final state by key.

    @ivar key: the request's correlation key.
    """


class InDoubtTimeout(InDoubt, RequestTimeout):
    """
    A money-moving request timed out; it is in doubt and being reversed.
    """

    def __init__(self, key, timeout):
        RequestTimeout.__init__(
            self, key, timeout, "the transaction is in doubt and is being reversed"
        )


class InDoubtLinkLost(InDoubt, LinkLost):
    """
    The link carrying a money-moving request was lost before its answer
    came; it is in doubt and being reversed.
    """

    def __init__(self, key, why):
        self.key = key
        LinkLost.__init__(
            self,
            "%s; transaction %s is in doubt and is being reversed" % (why, "/".join(map(str, key))),
        )


class InDoubtAnswer(InDoubt):
    """
    The payment node answered a money-moving request with a code that does
    not say whether money moved (C{91}, C{96}); it is in doubt and being
    reversed.

    @ivar answer: the answer C{dict}.
    """


class HeaderRejected(RequestError):
    """
    The peer rejected a request's CUPS header: the request fails with the
    header's reject code.

    @ivar code: the five-character reject code.
    @ivar key: the rejected request's correlation key, or C{None} when it
        could not be read.
    @ivar mti: the rejected request's MTI, or C{None}.
    """

    def __init__(self, code, key=None, mti=None):
        self.code = code
        self.key = key
        self.mti = mti
        RequestError.__init__(
            self,
            "peer rejected the header of %s %s with reject code %s"
            % (mti or "a message", "/".join(map(str, key)) if key else "(key unreadable)", code),
        )
