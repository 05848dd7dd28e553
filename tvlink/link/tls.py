"""
TLS for the links: certificate loading, the context factories of both
roles, a server endpoint wrapper, and the handshake watch every TLS link
carries.

The payment side listens with L{ServerTLS}: its certificate, and with a CA
file mutual TLS, a client certificate signed by that CA being required.
The platform connects with L{ClientTLS}: it always verifies the payment
node's certificate (against the CA file, else the platform's trust store)
and its host name or address (service-identity), and presents its own
certificate when it has one. Both refuse anything older than TLS 1.2.

Every TLS link is a L{TLSLink} mixed into the factory's protocol class. The
link's own timers start at C{connectionMade}, which Twisted calls before
the handshake, so a peer that never finishes the handshake would only be
dropped by read-idle (minutes). L{TLSLink} adds a shorter handshake
timeout, and logs a refused or failed handshake with the peer and the
reason (C{link_event="tls-failed"}).
"""

import re
import weakref

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from tvlink.errors import TVLinkError
from tvlink.link.settings import PLATFORM, positive

#: The oldest protocol either role accepts.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

#: Seconds a TLS handshake may take before the connection is dropped.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

_PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.S)


class TLSConfigError(TVLinkError, ValueError):
    """
    A TLS file is missing, unreadable, does not parse, or does not fit the
    others. The message names the file.
    """


def _read(path, what):
    if not path or not isinstance(path, str):
        raise TLSConfigError("%s: no file named (got %r)" % (what, path))
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError("%s %s cannot be read: %s" % (what, path, e.strerror or e)) from None


def loadCertificates(path, what="certificate file"):
    """
    Every PEM certificate in the file at C{path}, in order, as
    L{cryptography.x509.Certificate}.

    @raise TLSConfigError: naming C{path} if it cannot be read or holds no
        certificate.
    """
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigError("%s %s holds no PEM certificate" % (what, path))
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError("%s %s does not parse: %s" % (what, path, e)) from None


def loadPrivateKey(path, what="key file"):
    """
    The PEM private key in the file at C{path} (unencrypted; a key file
    needing a passphrase is refused rather than prompting on a terminal).

    @raise TLSConfigError: naming C{path}.
    """
    data = _read(path, what)
    match = _PEM_KEY.search(data)
    if match is None:
        raise TLSConfigError("%s %s holds no PEM private key" % (what, path))
    try:
        return serialization.load_pem_private_key(match.group(0), password=None)
    except TypeError:
        raise TLSConfigError(
            "%s %s holds an encrypted private key; give an unencrypted one" % (what, path)
        ) from None
    except (ValueError, crypto.Error) as e:
        raise TLSConfigError("%s %s does not parse: %s" % (what, path, e)) from None


def _spki(publicKey):
    return publicKey.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Identity:
    """
    A certificate (with its chain) and the private key that goes with it.

    @ivar certificate: the leaf, a L{cryptography.x509.Certificate}.
    @ivar privateKey: its key.
    @ivar chain: the intermediate certificates that followed it in the
        file.
    @ivar subject: the leaf's subject, RFC 4514.
    """

    def __init__(self, certPath, keyPath=None, certWhat="certificate file", keyWhat="key file"):
        certs = loadCertificates(certPath, certWhat)
        if keyPath is None:
            # The key may sit in the certificate file.
            if _PEM_KEY.search(_read(certPath, certWhat)) is None:
                raise TLSConfigError(
                    "%s %s holds no private key and no key file was given" % (certWhat, certPath)
                )
            keyPath, keyWhat = certPath, certWhat
        key = loadPrivateKey(keyPath, keyWhat)
        leaf = certs[0]
        if _spki(leaf.public_key()) != _spki(key.public_key()):
            raise TLSConfigError(
                "%s %s does not match the certificate in %s %s"
                % (keyWhat, keyPath, certWhat, certPath)
            )
        self.subject = leaf.subject.rfc4514_string()
        self.certificate = leaf
        self.privateKey = key
        self.chain = certs[1:]

    def certificateOptions(self):
        """
        Keyword arguments for L{twisted.internet.ssl.CertificateOptions}
        presenting this identity.
        """
        options = {"privateKey": self.privateKey, "certificate": self.certificate}
        if self.chain:
            options["extraCertChain"] = list(self.chain)
        return options


def loadTrustRoot(path, what="CA file"):
    """
    An L{IOpenSSLTrustRoot} trusting every certificate in the file at
    C{path}.
    """
    certs = loadCertificates(path, what)
    return ssl.trustRootFromCertificates(
        [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certs]
    )


class ServerTLS:
    """
    The payment side's TLS: its certificate and key, and with C{ca} mutual
    TLS (a client certificate signed by a CA in that file is required).

    @ivar options: the L{twisted.internet.ssl.CertificateOptions}.
    @ivar contextFactory: what the TLS layer builds connections with.
    """

    def __init__(self, cert, key=None, ca=None, handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT):
        if not cert:
            raise TLSConfigError("a TLS server needs a certificate file (tls_cert)")
        self.identity = Identity(cert, key, "TLS certificate file", "TLS key file")
        self.mutual = ca is not None
        self.handshakeTimeout = positive("tls_handshake_timeout", handshake_timeout)
        options = dict(self.identity.certificateOptions(), raiseMinimumTo=MINIMUM_VERSION)
        if ca is not None:
            # A trust root makes CertificateOptions verify the peer and
            # require its certificate.
            options["trustRoot"] = loadTrustRoot(ca, "TLS CA file")
        self.options = ssl.CertificateOptions(**options)
        self.contextFactory = RefusalRecordingCreator(self.options) if self.mutual else self.options

    def wrapEndpoint(self, endpoint):
        """
        A server endpoint that speaks TLS over C{endpoint}.
        """
        return TLSServerEndpoint(endpoint, self.contextFactory)

    def configure(self, factory):
        """
        Make C{factory}'s links watch their handshake.
        """
        factory.protocol = tlsLinkClass(factory.protocol)
        factory.tlsHandshakeTimeout = self.handshakeTimeout


class ClientTLS:
    """
    The platform's TLS: it always verifies the server's certificate (against
    C{ca}, else the platform trust store) and that it names C{hostname}
    (default: the host each link connects to); with C{cert} it presents its
    own certificate.
    """

    def __init__(
        self, cert=None, key=None, ca=None, hostname=None, handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT
    ):
        if key is not None and cert is None:
            raise TLSConfigError("TLS key file %s given without a certificate file" % (key,))
        self.identity = (
            Identity(cert, key, "TLS certificate file", "TLS key file") if cert is not None else None
        )
        self.trustRoot = loadTrustRoot(ca, "TLS CA file") if ca is not None else ssl.platformTrust()
        if hostname is not None and (not isinstance(hostname, str) or not hostname.strip()):
            raise TLSConfigError("tls_hostname must be a host name, not %r" % (hostname,))
        self.hostname = hostname
        self.handshakeTimeout = positive("tls_handshake_timeout", handshake_timeout)

    def creatorFor(self, host):
        """
        The client connection creator for a link to C{host}.
        """
        extra = {"raiseMinimumTo": MINIMUM_VERSION}
        if self.identity is not None:
            extra.update(self.identity.certificateOptions())
        hostname = self.hostname or host
        return IdentityCheckingCreator(
            ssl.optionsForClientTLS(
                hostname, trustRoot=self.trustRoot, extraCertificateOptions=extra
            ),
            hostname,
        )

    def configure(self, factory, host):
        """
        Make C{factory}'s links watch their handshake, and give it the
        connection creator (C{factory.tlsCreator}) for C{host}.
        """
        factory.protocol = tlsLinkClass(factory.protocol)
        factory.tlsHandshakeTimeout = self.handshakeTimeout
        factory.tlsCreator = self.creatorFor(host)


#: Why a TLS protocol's peer certificate was refused, for its link's log.
_refusals = weakref.WeakKeyDictionary()

#: OpenSSL's words for the certificate errors a link is likely to meet.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


def _subject(certificate):
    try:
        return certificate.to_cryptography().subject.rfc4514_string()
    except Exception:
        return "?"


def _verifier(protocolRef, what, checkIdentity=None):
    """
    An OpenSSL verify callback that keeps OpenSSL's verdict on the chain,
    adds C{checkIdentity} (raising on a mismatch) for the leaf, and
    remembers why it refused, for the link's log.
    """

    def verify(connection, certificate, errno, depth, ok):
        protocol = protocolRef()
        if not ok:
            if protocol is not None and protocol not in _refusals:
                _refusals[protocol] = "%s %s not trusted: %s" % (
                    what,
                    _subject(certificate),
                    _VERIFY_ERRORS.get(errno, "X509 verify error %d" % (errno,)),
                )
            return False
        if depth == 0 and checkIdentity is not None:
            try:
                checkIdentity(certificate.to_cryptography())
            except Exception as e:
                if protocol is not None:
                    _refusals[protocol] = describeVerificationError(e)
                return False
        return True

    return verify


@implementer(IOpenSSLClientConnectionCreator)
class IdentityCheckingCreator:
    """
    Wrap what L{twisted.internet.ssl.optionsForClientTLS} makes so that a
    server certificate for another name fails inside the handshake.

    Twisted's own check aborts the TCP connection on a name mismatch, so
    the server only sees the connection drop. Here the same check
    (service-identity) runs in OpenSSL's verify callback and fails it, so
    OpenSSL sends the server an alert and both ends can log the refusal.
    Twisted's check stays on after the handshake as a second guard.
    """

    def __init__(self, creator, hostname):
        self.creator = creator
        self.hostname = hostname
        if isIPAddress(hostname) or isIPv6Address(hostname):
            from service_identity.cryptography import verify_certificate_ip_address as check
        else:
            from service_identity.cryptography import verify_certificate_hostname as check
        self._check = lambda certificate: check(certificate, hostname)

    def clientConnectionForTLS(self, tlsProtocol):
        connection = self.creator.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            _verifier(weakref.ref(tlsProtocol), "server certificate", self._check),
        )
        return connection


@implementer(IOpenSSLServerConnectionCreator)
class RefusalRecordingCreator:
    """
    Wrap the server's L{twisted.internet.ssl.CertificateOptions} so that a
    client certificate it refuses is logged with its subject and the
    reason, not just OpenSSL's "certificate verify failed".
    """

    def __init__(self, options):
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol):
        connection = self.options.serverConnectionForTLS(tlsProtocol)
        connection.set_verify(
            connection.get_verify_mode(),
            _verifier(weakref.ref(tlsProtocol), "client certificate"),
        )
        return connection


def describeVerificationError(error):
    """
    Words for a service-identity C{VerificationError}: which name the
    server certificate failed to carry.
    """
    described = []
    for mismatch in getattr(error, "errors", None) or ():
        wanted = getattr(mismatch, "mismatched_id", None)
        name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None) or wanted
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        described.append("server certificate does not name %s" % (name,))
    return "; ".join(described) or "server certificate check failed: %s" % (error,)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Listen on another stream endpoint and speak TLS to whoever connects,
    as C{listenSSL} does over TCP.
    """

    def __init__(self, wrapped, contextFactory):
        self.wrapped = wrapped
        self.contextFactory = contextFactory

    def listen(self, protocolFactory):
        return self.wrapped.listen(_RefusingTLSFactory(self.contextFactory, False, protocolFactory))


class _RefusingTLSFactory(TLSMemoryBIOFactory):
    """
    TLS over a factory whose C{buildProtocol} may refuse a connection (by
    returning C{None}, as the payment side does at its link limits): then
    the connection is refused before any handshake.
    """

    def buildProtocol(self, addr):
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


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
            refused = _refusals.pop(self.transport, None)
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
