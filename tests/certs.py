"""
Certificates for the TLS tests, made at test time with C{cryptography} in
a directory the test gives (nothing private is ever committed).

L{makeCertificates} writes:

- C{ca}: the CA both roles trust; C{rogueCA}: another CA nobody trusts.
- C{server}: the payment node, for C{localhost} and C{127.0.0.1}
  (subjectAltName), signed by C{ca}, server authentication only.
- C{client}: a platform signed by C{ca}; C{rogueClient}: a platform signed
  by C{rogueCA}; both client authentication only.
- C{otherKey}: a key that belongs to no certificate.
- C{combined}: the client certificate and its key in one file.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common):
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tvlink tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _build(subject, key, issuer, issuerKey, ca=False, sans=(), usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuerKey.public_key()), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuerKey, hashes.SHA256())


def _certPEM(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _keyPEM(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Certificates:
    """
    Paths of the files L{makeCertificates} wrote: C{ca}, C{rogueCA},
    C{server}, C{serverKey}, C{client}, C{clientKey}, C{rogueClient},
    C{rogueClientKey}, C{otherKey}, C{combined}.
    """

    def __init__(self, directory):
        self.directory = directory

    def path(self, name):
        return os.path.join(self.directory, name)


def makeCertificates(directory, clientNames=()):
    """
    Write a fresh set of test certificates into C{directory} (made if
    missing) and return their L{Certificates}.

    @param clientNames: common names of more client certificates signed by
        C{ca}: each is C{client-NAME.pem} and C{client-NAME.key}, their
        paths in C{named[NAME]} as C{(certificate, key)}.
    """
    os.makedirs(directory, exist_ok=True)
    out = Certificates(directory)

    def write(attribute, filename, data):
        path = out.path(filename)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        setattr(out, attribute, path)

    caKey = _key()
    caName = _name("tvlink test CA")
    ca = _build(caName, caKey, caName, caKey, ca=True)
    rogueKey = _key()
    rogueName = _name("tvlink rogue CA")
    rogue = _build(rogueName, rogueKey, rogueName, rogueKey, ca=True)

    serverKey = _key()
    server = _build(
        _name("localhost"),
        serverKey,
        caName,
        caKey,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    clientKey = _key()
    client = _build(
        _name("platform TV01"), clientKey, caName, caKey, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    rogueClientKey = _key()
    rogueClient = _build(
        _name("platform TV01"),
        rogueClientKey,
        rogueName,
        rogueKey,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )

    write("ca", "ca.pem", _certPEM(ca))
    write("rogueCA", "rogue-ca.pem", _certPEM(rogue))
    write("server", "server.pem", _certPEM(server))
    write("serverKey", "server.key", _keyPEM(serverKey))
    write("client", "client.pem", _certPEM(client))
    write("clientKey", "client.key", _keyPEM(clientKey))
    write("rogueClient", "rogue-client.pem", _certPEM(rogueClient))
    write("rogueClientKey", "rogue-client.key", _keyPEM(rogueClientKey))
    write("otherKey", "other.key", _keyPEM(_key()))
    write("combined", "client-combined.pem", _certPEM(client) + _keyPEM(clientKey))
    out.named = {}
    for common in clientNames:
        key = _key()
        cert = _build(_name(common), key, caName, caKey, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        paths = (out.path("client-%s.pem" % (common,)), out.path("client-%s.key" % (common,)))
        for path, data in zip(paths, (_certPEM(cert), _keyPEM(key))):
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o600)
        out.named[common] = paths
    return out
