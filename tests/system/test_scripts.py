"""
The scripts beside the package (C{bench/}, C{fuzz/}) import tvlink by
name; a module that moves must not leave them importing what is gone.
They are not run here (a benchmark is not a test, the fuzz target needs
atheris): each C{import tvlink...} and C{from tvlink... import name} they
hold is resolved against the package.
"""

import ast
import importlib
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT_FOLDERS = ("bench", "fuzz")


def scripts():
    for folder in SCRIPT_FOLDERS:
        where = os.path.join(ROOT, folder)
        for name in sorted(os.listdir(where)):
            if name.endswith(".py"):
                yield os.path.join(folder, name), os.path.join(where, name)


def tvlinkImports(source):
    """
    Yield C{(module, name)} for each import of tvlink in C{source}; C{name}
    is L{None} for a plain C{import module}.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tvlink"):
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tvlink":
                    yield alias.name, None


def resolves(module, name):
    try:
        found = importlib.import_module(module)
    except ImportError:
        return False
    if name is None or hasattr(found, name):
        return True
    try:
        importlib.import_module(module + "." + name)
    except ImportError:
        return False
    return True


class ScriptImportTests(SynchronousTestCase):
    def test_scriptsFound(self):
        """
        The walk finds the benchmark and fuzz scripts, and they import
        tvlink (a walk that found nothing would pass everything).
        """
        found = dict(scripts())
        self.assertIn(os.path.join("fuzz", "fuzz_decoder.py"), found)
        self.assertIn(os.path.join("bench", "link_bench.py"), found)
        with open(found[os.path.join("fuzz", "fuzz_decoder.py")]) as f:
            self.assertIn(("tvlink.link", "wire"), list(tvlinkImports(f.read())))

    def test_movedNameFails(self):
        """
        A name the package no longer has does not resolve.
        """
        self.assertFalse(resolves("tvlink", "wire"))
        self.assertFalse(resolves("tvlink.nowhere", None))
        self.assertTrue(resolves("tvlink.link", "wire"))

    def test_everyImportResolves(self):
        """
        Every tvlink import in every script names something that exists.
        """
        missing = []
        for shown, path in scripts():
            with open(path) as f:
                for module, name in tvlinkImports(f.read()):
                    if not resolves(module, name):
                        missing.append("%s: %s %s" % (shown, module, name or ""))
        self.assertEqual(missing, [])
