"""
Tests for L{tvlink.platform.cardvault}.
"""

import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase

from tvlink.platform.cardvault import (
    BadKeyFile,
    BrokenSeal,
    CardVault,
    CardVaultError,
    WrongKey,
    readKeyFile,
    sealedKeyId,
)

PAN = "6222020000000000018"
KEY = ("PLATFORM", "000123", "1204175700")


def keyFile(testCase, key=None, mode=0o600, text=None):
    """
    A key file made as the operator makes one; its path.
    """
    path = testCase.mktemp()
    if text is None:
        text = (os.urandom(32) if key is None else key).hex() + "\n"
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class CardVaultTests(SynchronousTestCase):
    def test_roundTrip(self):
        vault = CardVault(os.urandom(32))
        sealed = vault.seal(PAN, KEY)
        self.assertNotIn(PAN, sealed)
        self.assertNotIn(PAN[-8:], sealed)
        self.assertEqual(vault.open(sealed, KEY), PAN)

    def test_freshNonce(self):
        vault = CardVault(os.urandom(32))
        self.assertNotEqual(vault.seal(PAN, KEY), vault.seal(PAN, KEY))

    def test_keyId(self):
        key = os.urandom(32)
        vault = CardVault(key)
        self.assertEqual(vault.keyId, hashlib.sha256(key).hexdigest()[:8])
        sealed = vault.seal(PAN, KEY)
        self.assertEqual(sealedKeyId(sealed), vault.keyId)
        self.assertTrue(sealed.startswith("v1:" + vault.keyId + ":"))
        self.assertNotIn(key.hex(), repr(vault))

    def test_wrongKeyRefused(self):
        sealed = CardVault(os.urandom(32)).seal(PAN, KEY)
        other = CardVault(os.urandom(32))
        e = self.assertRaises(WrongKey, other.open, sealed, KEY)
        self.assertIn(sealedKeyId(sealed), str(e))
        self.assertIn(other.keyId, str(e))

    def test_movedRowRefused(self):
        vault = CardVault(os.urandom(32))
        sealed = vault.seal(PAN, KEY)
        e = self.assertRaises(BrokenSeal, vault.open, sealed, ("PLATFORM", "000124", KEY[2]))
        self.assertIn("moved", str(e))

    def test_alteredRefused(self):
        vault = CardVault(os.urandom(32))
        sealed = vault.seal(PAN, KEY)
        last = "A" if sealed[-3] != "A" else "B"
        self.assertRaises(BrokenSeal, vault.open, sealed[:-3] + last + sealed[-2:], KEY)
        self.assertRaises(BrokenSeal, vault.open, "v1:%s:!!" % (vault.keyId,), KEY)
        self.assertRaises(CardVaultError, vault.open, "622202******0018", KEY)

    def test_keyFile(self):
        key = os.urandom(32)
        path = keyFile(self, key)
        self.assertEqual(readKeyFile(path), key)
        vault = CardVault.fromKeyFile(path)
        self.assertEqual(vault.open(CardVault(key).seal(PAN, KEY), KEY), PAN)
        self.assertEqual(vault.source, path)

    def test_badKeyFilesNamed(self):
        cases = [
            keyFile(self, text=os.urandom(16).hex()),
            keyFile(self, text=os.urandom(33).hex()),
            keyFile(self, text="not hex at all"),
            keyFile(self, mode=0o640),
            keyFile(self, mode=0o604),
            self.mktemp(),
        ]
        for path in cases:
            e = self.assertRaises(BadKeyFile, CardVault.fromKeyFile, path)
            self.assertIn(path, str(e))
        e = self.assertRaises(BadKeyFile, CardVault.fromKeyFile, cases[0])
        self.assertIn("16 bytes, not 32", str(e))
        e = self.assertRaises(BadKeyFile, CardVault.fromKeyFile, cases[3])
        self.assertIn("chmod 600", str(e))

    def test_badKey(self):
        self.assertRaises(CardVaultError, CardVault, b"short")
        self.assertRaises(CardVaultError, CardVault, os.urandom(32).hex())
