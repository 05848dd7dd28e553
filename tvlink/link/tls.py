"""
TLS for the links: certificate loading, the context factories of both
roles and a server endpoint wrapper. Certificate verification is in
L{tvlink.link.verify}, the handshake watch every TLS link carries in
L{tvlink.link.tlslink}.

The payment side listens with L{ServerTLS}: its certificate, and with a CA
file mutual TLS, a client certificate signed by that CA being required.
The platform connects with L{ClientTLS}: it always verifies the payment
node's certificate (against the CA file, else the platform's trust store)
and its host name or address (service-identity), and presents its own
certificate when it has one. Both refuse anything older than TLS 1.2.

Every TLS link is a L{tvlink.link.tlslink.TLSLink} mixed into the factory's protocol class. The
link's own timers start at C{connectionMade}, which Twisted calls before
the handshake, so a peer that never finishes the handshake would only be
dropped by read-idle (minutes). C{TLSLink} adds a shorter handshake
timeout, and logs a refused or failed handshake with the peer and the
reason (C{link_event="tls-failed"}).
"""

import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IStreamServerEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from tvlink.errors import TVLinkError
from tvlink.link.settings import positive
from tvlink.link.tlslink import DEFAULT_HANDSHAKE_TIMEOUT, tlsLinkClass
from tvlink.link.verify import IdentityCheckingCreator, RefusalRecordingCreator

#: The oldest protocol either role accepts.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

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


