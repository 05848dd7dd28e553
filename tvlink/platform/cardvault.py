"""
L{CardVault}: card numbers sealed for the platform's journal, so that a
C{0420} reversal made from the journal (after a restart too) can name the
card of its original, while the database holds no clear card number.

A card number is sealed with AES-256-GCM (from the C{cryptography}
package) under a fresh random 96-bit nonce, with the journal entry's key
(sender, STAN, transmission time) as associated data: a sealed card moved
to another row does not open. A sealed value is text::

    v1:KEYID:BASE64(NONCE || CIPHERTEXT || TAG)

C{KEYID} is the first 8 hex digits of the SHA-256 of the key, so a value
sealed under another key (before a rekey, or a wrong key file) is refused
with an error that says so, never opened into garbage.

The key file is made by the operator: 32 random bytes written as 64 hex
digits (surrounding white space is ignored), readable by its owner only::

    python3 -c "import os; print(os.urandom(32).hex())" > card.key
    chmod 600 card.key
"""

import base64
import binascii
import hashlib
import os
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The sealed format's version tag.
VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12


class CardVaultError(Exception):
    """
    A card number could not be sealed or opened, or a key not loaded.
    """


class BadKeyFile(CardVaultError):
    """
    A key file is missing, of the wrong size or form, or readable by
    others than its owner.
    """


class WrongKey(CardVaultError):
    """
    A sealed card was sealed under another key than the vault's.
    """


class BrokenSeal(CardVaultError):
    """
    A sealed card does not open under its own key: it was altered, or
    moved from the journal entry it was sealed for.
    """


def keyIdOf(key):
    """
    The key id of C{key} (bytes): the first 8 hex digits of its SHA-256.
    """
    return hashlib.sha256(key).hexdigest()[:8]


def sealedKeyId(sealed):
    """
    The key id a sealed value names, or raise L{CardVaultError} if
    C{sealed} is not a sealed value.
    """
    parts = sealed.split(":") if isinstance(sealed, str) else []
    if len(parts) != 3 or parts[0] != VERSION or len(parts[1]) != 8:
        raise CardVaultError("not a sealed card value (expected %s:KEYID:DATA)" % (VERSION,))
    return parts[1]


def associatedData(key):
    """
    The associated data binding a sealed card to the journal entry C{key}
    (sender, STAN, transmission time).
    """
    return ("tvlink-card\x00" + "\x00".join(str(part) for part in key)).encode("utf-8")


def readKeyFile(path):
    """
    The 32-byte key in the file at C{path} (64 hex digits).

    @raise BadKeyFile: naming C{path}, if it cannot be read, is readable
        or writable by group or others, or does not hold 32 bytes in hex.
    """
    try:
        info = os.stat(path)
    except OSError as e:
        raise BadKeyFile("card key file %s: %s" % (path, e.strerror or e)) from None
    if not stat.S_ISREG(info.st_mode):
        raise BadKeyFile("card key file %s is not a regular file" % (path,))
    if os.name == "posix" and info.st_mode & 0o077:
        raise BadKeyFile(
            "card key file %s is open to group or others (mode %03o); make it the owner's "
            "only: chmod 600 %s" % (path, stat.S_IMODE(info.st_mode), path)
        )
    try:
        with open(path, "rb") as f:
            text = f.read(4096)
    except OSError as e:
        raise BadKeyFile("card key file %s: %s" % (path, e.strerror or e)) from None
    try:
        key = binascii.unhexlify(text.strip())
    except (binascii.Error, ValueError):
        raise BadKeyFile(
            "card key file %s does not hold hex digits: it must hold %d random bytes as %d hex digits"
            % (path, KEY_BYTES, 2 * KEY_BYTES)
        ) from None
    if len(key) != KEY_BYTES:
        raise BadKeyFile(
            "card key file %s holds %d bytes, not %d: it must hold %d random bytes as %d hex digits"
            % (path, len(key), KEY_BYTES, KEY_BYTES, 2 * KEY_BYTES)
        )
    return key


class CardVault:
    """
    Seals and opens card numbers under one AES-256-GCM key.

    @param key: the 32-byte key.
    @param source: where the key came from (a file name), for messages,
        or C{None}.

    @ivar keyId: the key's id, stored with every value it seals.
    """

    def __init__(self, key, source=None):
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise CardVaultError("a card key is %d bytes" % (KEY_BYTES,))
        self.keyId = keyIdOf(key)
        self.source = source
        self.aead = AESGCM(key)

    @classmethod
    def fromKeyFile(cls, path):
        """
        A vault with the key in the file at C{path} (see L{readKeyFile}).
        """
        return cls(readKeyFile(path), source=path)

    def __repr__(self):
        return "<CardVault key %s>" % (self.keyId,)

    def seal(self, pan, key):
        """
        C{pan} (text) sealed for the journal entry C{key}.
        """
        nonce = os.urandom(NONCE_BYTES)
        data = self.aead.encrypt(nonce, pan.encode("ascii"), associatedData(key))
        return "%s:%s:%s" % (VERSION, self.keyId, base64.b64encode(nonce + data).decode("ascii"))

    def open(self, sealed, key):
        """
        The card number C{sealed} for the journal entry C{key}.

        @raise WrongKey: if it was sealed under another key.
        @raise BrokenSeal: if it does not open for C{key} (moved or
            altered).
        """
        keyId = sealedKeyId(sealed)
        if keyId != self.keyId:
            raise WrongKey(
                "the card of %s was sealed under key %s, not under key %s%s: a wrong card key "
                "file, or a rekey not finished"
                % ("/".join(key), keyId, self.keyId, "" if self.source is None else " of " + self.source)
            )
        try:
            raw = base64.b64decode(sealed.split(":")[2], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) <= NONCE_BYTES:
            raise BrokenSeal("the sealed card of %s is damaged" % ("/".join(key),))
        try:
            clear = self.aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associatedData(key))
        except InvalidTag:
            raise BrokenSeal(
                "the sealed card of %s does not open under key %s: it was altered, or moved "
                "from another journal entry" % ("/".join(key), self.keyId)
            ) from None
        return clear.decode("ascii")
