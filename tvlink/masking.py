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

L{MaskingObserver} wraps an L{ILogObserver} and hands it a masked copy of
each event: every string field (nested in dicts, lists and tuples too),
the format string, exceptions and failures (message and traceback text),
and, if some other object in a field would still render a card number,
the formatted text as a whole. L{installMasking} puts one in front of
every observer of the global log publisher, present and future, which
is how C{twistd tvlink ...} runs are masked without any option (the tap
calls it in C{makeService}, before twistd starts logging).
"""

import io
import re
import sys

from twisted.logger import (
    ILogObserver,
    LogPublisher,
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
    A copy of a L{Failure} whose exception, frames and every text it
    renders (traceback, brief traceback, error message) are masked.
    """

    def printTraceback(self, file=None, elideFrameworkCode=False, detail="default"):
        out = io.StringIO()
        Failure.printTraceback(self, out, elideFrameworkCode, detail)
        if file is None:
            from twisted.python import log

            file = log.logerr
        file.write(maskPan(out.getvalue()))

    def getErrorMessage(self):
        return maskPan(Failure.getErrorMessage(self))


def maskFailure(failure):
    """
    A L{MaskedFailure} copy of C{failure} (the original is left alone).
    """
    if isinstance(failure, MaskedFailure):
        return failure
    masked = Failure.__new__(MaskedFailure)
    state = dict(failure.__dict__)
    try:
        state["_parents"] = failure.parents
        frames = failure.frames
    except Exception:
        frames = []
    state["_frames"] = [
        (
            maskPan(name),
            maskPan(filename),
            line,
            [(k, maskPan(safe_str(v))) for k, v in localz],
            [(k, maskPan(safe_str(v))) for k, v in globalz],
        )
        for name, filename, line, localz, globalz in frames
    ]
    state["tb"] = None
    value = failure.value
    state["value"] = maskFailure(value) if isinstance(value, Failure) else maskException(value)
    masked.__dict__.update(state)
    return masked


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


@implementer(ILogObserver)
class MaskingObserver:
    """
    An L{ILogObserver} that passes a masked copy of each event on to
    C{observer}.
    """

    def __init__(self, observer):
        self.observer = observer

    def __call__(self, event):
        try:
            masked = maskEvent(event)
        except Exception as e:
            # Never let an unmaskable event through, and never go quiet.
            masked = {
                "log_format": "{text}",
                "text": "unloggable event (masking failed: %s): %s"
                % (maskPan(safe_str(e)), maskPan(safe_str(event.get("log_format")))),
            }
            for key in ("log_time", "log_level", "log_namespace", "log_system"):
                if key in event:
                    masked[key] = event[key]
        self.observer(masked)


def installMasking(publisher=None):
    """
    Make every observer of C{publisher} (default: the global log
    publisher), those it has now and those added later, see masked events
    only.

    The observers it has are moved behind one L{MaskingObserver}, and its
    C{addObserver}/C{removeObserver} are pointed there too, so what
    C{twistd} adds when it starts logging (and the events it replays from
    the startup buffer) is masked as well. Idempotent.

    @return: the L{MaskingObserver}.
    """
    if publisher is None:
        from twisted.logger import globalLogPublisher as publisher
    existing = publisher.__dict__.get("_tvlinkMasking")
    if existing is not None:
        return existing
    inner = LogPublisher()
    for observer in list(getattr(publisher, "_observers", ())):
        publisher.removeObserver(observer)
        inner.addObserver(observer)
    masking = MaskingObserver(inner)
    publisher.addObserver(masking)
    publisher.addObserver = inner.addObserver
    publisher.removeObserver = inner.removeObserver
    publisher._tvlinkMasking = masking
    return masking


def uninstallMasking(publisher=None):
    """
    Undo L{installMasking}: the observers go back to C{publisher} itself.
    """
    if publisher is None:
        from twisted.logger import globalLogPublisher as publisher
    masking = publisher.__dict__.pop("_tvlinkMasking", None)
    if masking is None:
        return
    del publisher.addObserver
    del publisher.removeObserver
    publisher.removeObserver(masking)
    inner = masking.observer
    for observer in list(getattr(inner, "_observers", ())):
        publisher.addObserver(observer)


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
