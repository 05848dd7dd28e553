"""
The installed package is whole: every module of the source tree imports
from a folder outside the checkout, and the installed twistd knows the
plugin. (The integration tests put the checkout on the path, so they would
not notice a subpackage missing from setup.cfg.)
"""

import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sourceModules():
    modules = []
    for folder, dirs, files in os.walk(os.path.join(ROOT, "tvlink")):
        dirs[:] = [d for d in dirs if not d.startswith("__")]
        package = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        for name in sorted(files):
            if name.endswith(".py"):
                modules.append(package if name == "__init__.py" else package + "." + name[:-3])
    return sorted(modules)


class InstalledTests(SynchronousTestCase):
    def run_outside(self, *argv):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cwd = tempfile.mkdtemp(prefix="tvlink-install-")
        self.addCleanup(os.rmdir, cwd)
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)

    def test_every_module_is_installed(self):
        modules = sourceModules()
        self.assertIn("tvlink.web.terminal", modules)
        script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok')"
        done = self.run_outside(sys.executable, "-c", script, *modules)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        self.assertEqual(done.stdout.strip(), "ok")

    def test_installed_twistd_knows_tvlink(self):
        done = self.run_outside(
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "tvlink", "--help"
        )
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        for role in ("payment", "platform", "sandbox"):
            self.assertIn(role, done.stdout)
