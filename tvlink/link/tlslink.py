"""
L{TLSLink}: what every link over TLS adds to L{tvlink.link.protocol.LinkProtocol}
(a handshake deadline, the handshake logged, a refused handshake logged
with the peer and the reason) and how a failed TLS connection is put into
words.
"""

import re
import weakref

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHandshakeListener,
)
from twisted.logger import Logger
from zope.interface import implementer

from tvlink.link.settings import PLATFORM
from tvlink.link.verify import describeVerificationError, takeRefusal

#: Seconds a TLS handshake may take before the connection is dropped.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

_ALERT = re.compile(r"^(?:sslv3|tlsv1|tlsv13) alert (.+)$")


def describeTLSFailure(failure):
    """
    Words for why a TLS connection failed, from the L{Failure} its protocol
    was lost with.
    """
    value = failure.value
    if isinstance(value, SSL.Error):
        reasons = []
        for entry in value.args[0] if value.args and isinstance(value.args[0], list) else ():
            text = str(entry[-1] if isinstance(entry, tuple) and entry else entry)
            alert = _ALERT.match(text)
            if alert is not None:
                text = "the peer refused the handshake with the alert %r" % (alert.group(1),)
            if text and text not in reasons:
                reasons.append(text)
        return "; ".join(reasons) or str(value) or "TLS error"
    if type(value).__name__ == "VerificationError":
        return describeVerificationError(value)
    if isinstance(value, ConnectionDone):
        return "the peer closed the connection"
    if isinstance(value, ConnectionLost):
        return "the connection was lost"
    return failure.getErrorMessage()


def isTLSFailure(failure):
    """
    Whether C{failure} is a TLS error or a failed certificate check.
    """
    return isinstance(failure.value, SSL.Error) or type(failure.value).__name__ == "VerificationError"


@implementer(IHandshakeListener)
class TLSLink:
    """
    Mixin for a L{tvlink.link.protocol.LinkProtocol} over TLS: drop the connection
    if the handshake has not finished within the factory's
    C{tlsHandshakeTimeout}, log the handshake's outcome, and say why a
    refused one failed.

    @ivar tlsDone: whether this side has finished the handshake.
    @ivar tlsFailure: why the handshake was given up locally, if it was.
    """

    tlsLog = Logger(namespace="tvlink.tls")
    backpressureAtConnect = False
    tlsDone = False
    tlsFailure = None
    _tlsCall = None

    def connectionMade(self):
        super().connectionMade()
        if self.state not in ("closing", "lost") and not self.tlsDone:
            timeout = getattr(self.factory, "tlsHandshakeTimeout", DEFAULT_HANDSHAKE_TIMEOUT)
            self._tlsCall = self.clock.callLater(timeout, self._tlsTimedOut, timeout)

    def handshakeCompleted(self):
        self._stopTLSTimer()
        self.tlsDone = True
        if self.state not in ("closing", "lost"):
            self.watchBackpressure()
        version, cipher, subject = tlsDetails(self.transport)
        self.tlsLog.info(
            "TLS with {peer} up: {version} {cipher}; peer certificate {subject}",
            link_event="tls-up",
            peer=self.peer,
            role=self.factory.role,
            version=version,
            cipher=cipher,
            subject=subject,
        )

    def _stopTLSTimer(self):
        call, self._tlsCall = self._tlsCall, None
        if call is not None and call.active():
            call.cancel()

    def _tlsTimedOut(self, timeout):
        self._tlsCall = None
        if self.tlsDone or self.state in ("closing", "lost"):
            return
        self.tlsFailure = "handshake not complete after %gs" % (timeout,)
        self.close("TLS " + self.tlsFailure)
        # A TLS close waits for the handshake when data is queued behind it
        # (the platform's sign-on): do not wait.
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._stopTLSTimer()
        why = self.tlsFailure
        if why is None and (isTLSFailure(reason) or not self.tlsDone):
            refused = takeRefusal(self.transport)
            if refused is not None:
                why = refused
            elif not isTLSFailure(reason) and self.closeReason:
                why = "closed locally before the handshake finished: %s" % (self.closeReason,)
            else:
                why = describeTLSFailure(reason)
            self.tlsFailure = why
        if why is not None:
            if self.factory.role == PLATFORM:
                text = "TLS to payment node {endpoint} failed: {reason}"
            else:
                text = "TLS with platform {peer} failed, link refused: {reason}"
            self.tlsLog.warn(
                text,
                link_event="tls-failed",
                peer=self.peer,
                endpoint=getattr(self.factory, "endpoint", None),
                role=self.factory.role,
                reason=why,
                handshakeDone=self.tlsDone,
            )
        super().connectionLost(reason)


_tlsClasses = weakref.WeakKeyDictionary()


def tlsLinkClass(base):
    """
    C{base} (a L{tvlink.link.protocol.LinkProtocol} subclass) with L{TLSLink} mixed
    in; made once per class.
    """
    if issubclass(base, TLSLink):
        return base
    cls = _tlsClasses.get(base)
    if cls is None:
        cls = _tlsClasses[base] = type(
            "TLS" + base.__name__, (TLSLink, base), {"__module__": __name__}
        )
    return cls


def tlsDetails(transport):
    """
    C{(version, cipher, peer subject)} of a TLS transport, as text.
    """
    try:
        connection = transport.getHandle()
        version = connection.get_protocol_version_name()
        cipher = connection.get_cipher_name()
    except Exception:
        return "?", "?", "?"
    subject = "none"
    try:
        cert = connection.get_peer_certificate(as_cryptography=True)
    except TypeError:
        cert = connection.get_peer_certificate()
        cert = cert.to_cryptography() if cert is not None else None
    except Exception:
        cert = None
    if cert is not None:
        subject = cert.subject.rfc4514_string()
    return version, cipher, subject
