"""
Card numbers out of the logs: L{maskPan}, and the one filter every log
event passes through.

A card or account number (PAN) is any run of 12 to 19 digits, optionally
grouped by single spaces or dashes, that is not part of a longer run of
digits. It is logged as its first 6 and last 4 digits with asterisks
between (C{622202*********0018}). Nothing is checked (no Luhn digit, no
issuer prefix): a number that only looks like a card is masked too, which
is the safe way to be wrong. A consequence worth knowing: a 12-digit
amount logged raw (C{000000001234}) is masked as well; log amounts as
money (C{12.34}).

L{maskEvent} masks a copy of an event: every string field (nested in
dicts, lists and tuples too), the format string, exceptions and failures
(message and traceback text), and, if some other object in a field would
still render a card number, the formatted text as a whole.
L{MaskingObserver} wraps an L{ILogObserver} and hands it masked copies;
L{installMasking} puts a L{MaskingFilter} on the global log publisher,
which masks each event in place for every observer added after it. That
is how C{twistd tvlink ...} runs are masked without any option: the tap
calls it in C{makeService}, before twistd starts logging. Only public
C{twisted.logger} API is used.
"""

import io
import re
import sys
import weakref

from twisted.logger import (
    ILogObserver,
    formatEvent,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str
from zope.interface import implementer

_PAN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){11,18}(?![0-9])")
_PAN_BYTES = re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){11,18}(?![0-9])")


def _maskMatch(text, star, isDigit):
    digits = sum(1 for c in text if isDigit(c))
    out = []
    seen = 0
    for c in text:
        if isDigit(c):
            seen += 1
            out.append(c if seen <= 6 or seen > digits - 4 else star)
        else:
            out.append(c)
    return out


def maskPan(text):
    """
    C{text} with every card number masked to its first 6 and last 4
    digits. Bytes in, bytes out; anything else is returned as it is.
    """
    if isinstance(text, str):
        if len(text) < 12:
            return text
        return _PAN.sub(lambda m: "".join(_maskMatch(m.group(0), "*", str.isdigit)), text)
    if isinstance(text, (bytes, bytearray)):
        if len(text) < 12:
            return bytes(text)
        return _PAN_BYTES.sub(
            lambda m: bytes(_maskMatch(m.group(0), 42, lambda b: 48 <= b <= 57)), bytes(text)
        )
    return text


def maskCard(pan):
    """
    One card number fit for a log or a screen: first 6 and last 4 digits,
    the rest starred (C{622202*********0018}). Short or odd values keep at
    most their last 4 characters; C{None} is C{"-"}.
    """
    if pan is None:
        return "-"
    pan = str(pan)
    if len(pan) >= 12:
        return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
    if len(pan) > 4:
        return "*" * (len(pan) - 4) + pan[-4:]
    return "*" * len(pan)


def hasPan(text):
    """
    Whether C{text} (str or bytes) holds an unmasked card number.
    """
    if isinstance(text, str):
        return _PAN.search(text) is not None
    if isinstance(text, (bytes, bytearray)):
        return _PAN_BYTES.search(bytes(text)) is not None
    return False


class MaskedException(Exception):
    """
    Stands in for an exception whose message held a card number and that
    could not be copied with the number masked.
    """


def maskException(exception):
    """
    C{exception}, or a copy of it of the same class with its arguments and
    string attributes masked when its text holds a card number.
    """
    text = safe_str(exception)
    if not hasPan(text) and not hasPan(repr(exception)):
        return exception
    try:
        cls = type(exception)
        copy = cls.__new__(cls, *exception.args)
        copy.args = tuple(maskValue(a) for a in exception.args)
        for name, value in vars(exception).items():
            setattr(copy, name, maskValue(value))
        if not hasPan(safe_str(copy)) and not hasPan(repr(copy)):
            return copy
    except Exception:
        pass
    return MaskedException(maskPan(text))


class MaskedFailure(Failure):
    """
    Stands in for a L{Failure} in a log event: the same exception type with
    a masked copy of its value, rendering every text (traceback, brief
    traceback, error message) as the original renders it, with card
    numbers masked. It is built with L{Failure}'s public constructor, with
    no traceback object of its own: it renders from the original, which it
    keeps as C{original} and leaves alone.
    """

    def __init__(self, original):
        value = maskException(original.value)
        Failure.__init__(self, value, type(value))
        self.original = original

    def printTraceback(self, file=None, elideFrameworkCode=False, detail="default"):
        out = io.StringIO()
        self.original.printTraceback(out, elideFrameworkCode, detail)
        if file is None:
            from twisted.python import log

            file = log.logerr
        file.write(maskPan(out.getvalue()))

    def getErrorMessage(self):
        return maskPan(self.original.getErrorMessage())

    def __getstate__(self):
        # What a JSON log line carries: the masked copy only, never the
        # original (whose frames may hold captured variables).
        state = Failure.__getstate__(self)
        state.pop("original", None)
        return state


def maskFailure(failure):
    """
    A L{MaskedFailure} standing in for C{failure} (left alone).
    """
    if isinstance(failure, MaskedFailure):
        return failure
    return MaskedFailure(failure)


def maskValue(value, _depth=0):
    """
    C{value} with card numbers masked: strings and bytes, exceptions,
    failures, and those inside dicts, lists, tuples and sets. Other objects
    are returned as they are.
    """
    if isinstance(value, str) or isinstance(value, (bytes, bytearray)):
        return maskPan(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return maskPan(str(value)) if hasPan(str(value)) else value
    if _depth > 20:
        return value
    if isinstance(value, Failure):
        return maskFailure(value)
    if isinstance(value, BaseException):
        return maskException(value)
    kind = type(value)
    if kind is dict:
        return {maskValue(k, _depth + 1): maskValue(v, _depth + 1) for k, v in value.items()}
    if kind in (list, tuple, set, frozenset):
        return kind(maskValue(v, _depth + 1) for v in value)
    return value


def _escape(text):
    return text.replace("{", "{{").replace("}", "}}")


def maskEvent(event):
    """
    A copy of log C{event} with every card number masked (see the module
    docstring). The original event is not changed.
    """
    masked = {key: maskValue(value) for key, value in event.items()}
    try:
        text = formatEvent(masked)
    except Exception:
        text = ""
    if hasPan(text):
        # Some object's str() or repr() carries a card number: freeze the
        # masked text as the format, with nothing left to interpolate.
        masked["log_format"] = _escape(maskPan(text))
        masked.pop("log_flattened", None)
    return masked


def maskedOrPlaceholder(event):
    """
    L{maskEvent} of C{event}, or, if masking fails, a placeholder event
    that says so (never the unmasked event, and never nothing).
    """
    try:
        return maskEvent(event)
    except Exception as e:
        masked = {
            "log_format": "{text}",
            "text": "unloggable event (masking failed: %s): %s"
            % (maskPan(safe_str(e)), maskPan(safe_str(event.get("log_format")))),
        }
        for key in ("log_time", "log_level", "log_namespace", "log_system"):
            if key in event:
                masked[key] = event[key]
        return masked


@implementer(ILogObserver)
class MaskingObserver:
    """
    An L{ILogObserver} that passes a masked copy of each event on to
    C{observer}.
    """

    def __init__(self, observer):
        self.observer = observer

    def __call__(self, event):
        self.observer(maskedOrPlaceholder(event))


@implementer(ILogObserver)
class MaskingFilter:
    """
    An L{ILogObserver} that masks each event it sees in place, so that the
    observers of the same publisher that come after it see it masked.

    A L{LogPublisher} hands one event C{dict} to its observers in the order
    they were added; this one replaces the event's contents with their
    masked copy. Observers added before it saw the event as it was, except
    those that only keep a reference to it, such as the buffer in which
    L{twisted.logger.globalLogBeginner} holds the events of a run until
    logging begins: what they replay later is masked.
    """

    def __call__(self, event):
        masked = maskedOrPlaceholder(event)
        event.clear()
        event.update(masked)


#: The filter installed on each publisher, by publisher.
_installed = weakref.WeakKeyDictionary()


def installMasking(publisher=None):
    """
    Put a L{MaskingFilter} on C{publisher} (default: the global log
    publisher), so that every observer added to it from now on sees masked
    events only. Idempotent.

    Call it before logging begins: C{twistd tvlink ...} calls it in
    C{makeService}, before twistd adds its log observer (and replays the
    events buffered until then, which are masked by then too). Observers
    added to C{publisher} before this call are not covered; wrap such an
    observer in a L{MaskingObserver} instead.

    @return: the L{MaskingFilter}.
    """
    if publisher is None:
        from twisted.logger import globalLogPublisher as publisher
    masking = _installed.get(publisher)
    if masking is None:
        masking = _installed[publisher] = MaskingFilter()
        publisher.addObserver(masking)
    return masking


def maskingInstalled(publisher=None):
    """
    Whether L{installMasking} has put its filter on C{publisher} (default:
    the global log publisher).
    """
    if publisher is None:
        from twisted.logger import globalLogPublisher as publisher
    return publisher in _installed


def uninstallMasking(publisher=None):
    """
    Undo L{installMasking}: events reach C{publisher}'s observers as they
    are logged.
    """
    if publisher is None:
        from twisted.logger import globalLogPublisher as publisher
    masking = _installed.pop(publisher, None)
    if masking is not None:
        publisher.removeObserver(masking)


def textLogger():
    """
    A C{twistd --logger} factory: masked text lines on standard output.
    """
    return MaskingObserver(textFileLogObserver(sys.stdout))


def jsonLogger():
    """
    A C{twistd --logger} factory: masked JSON lines on standard output.
    """
    return MaskingObserver(jsonFileLogObserver(sys.stdout))
