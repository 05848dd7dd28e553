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


class NoLinkAvailable(RequestError):
    """
    No payment link was ready to take the request; nothing was sent.
    """


class DuplicateKey(RequestError):
    """
    A request with the same (sender, stan, time) is already in flight;
    the second one was refused before it was sent.
    """


class SignOnRefused(TVLinkError):
    """
    The payment side answered the sign-on with a code other than C{00}.
    """
