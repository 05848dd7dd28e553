"""
Certificate verification for the TLS links: the OpenSSL verify callback
that adds the host-name or address check, and the words a refused
certificate is logged with.

Why a peer certificate was refused is noted by the TLS protocol it was
refused on, for that link to log when it is lost (L{takeRefusal}).
"""

import weakref

from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

#: Why a TLS protocol's peer certificate was refused, for its link's log.
_refusals = weakref.WeakKeyDictionary()


def takeRefusal(protocol):
    """
    Why C{protocol}'s peer certificate was refused, once, or C{None}.
    """
    return _refusals.pop(protocol, None)


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
