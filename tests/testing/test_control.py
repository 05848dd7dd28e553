"""
Tests for L{tvlink.testing.control}: the control port against a proxy in
front of an echo server on 127.0.0.1, the commands, the command line, and
C{python -m tvlink.testing.faultproxy} in another process.
"""

import io
import os
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.processes import ROOT
from tests.proxykit import (
    HOST,
    ControlClient,
    ProxyTestCase,
    Waiters,
    closeControl,
    getReactor,
    within,
)
from tvlink.testing.control import ControlServer, main, runCommand
from tvlink.testing.faultproxy import FaultProxy
from tvlink.testing.modes import Mode


class ControlTests(ProxyTestCase):
    @inlineCallbacks
    def setUp(self):
        yield ProxyTestCase.setUp(self)
        self.control = ControlServer(self.proxy)
        port = yield self.control.start()
        self.addCleanup(lambda: within(self.control.stop()))
        self.commands = ControlClient()
        endpoint = TCP4ClientEndpoint(getReactor(), HOST, port, timeout=3)
        yield within(connectProtocol(endpoint, self.commands))
        self.addCleanup(self.closeCommands)

    def closeCommands(self):
        return closeControl(self.commands)

    @inlineCallbacks
    def test_modeAndStats(self):
        answer = yield self.commands.command("mode delay 0.2")
        self.assertEqual(answer, "ok mode up=delay:0.2 down=delay:0.2")
        self.assertEqual(self.proxy.modes["up"], Mode("delay", 0.2))
        client = yield self.connect()
        reactor = getReactor()
        start = reactor.seconds()
        yield self.echoed(client, b"ping")
        self.assertGreaterEqual(reactor.seconds() - start, 0.2)
        answer = yield self.commands.command("stats")
        self.assertTrue(answer.startswith("ok "), answer)
        stats = dict(word.split("=", 1) for word in answer.split()[1:])
        self.assertEqual(stats["connections"], "1")
        self.assertEqual(stats["accepted"], "1")
        self.assertEqual(stats["bytesUp"], "4")
        self.assertEqual(stats["bytesDown"], "4")
        self.assertEqual(stats["up"], "delay:0.2")
        answer = yield self.commands.command("mode pass")
        self.assertEqual(answer, "ok mode up=pass down=pass")
        answer = yield self.commands.command("mode blackhole")
        self.assertEqual(answer, "ok mode up=blackhole down=blackhole")
        answer = yield self.commands.command("mode halfclose")
        self.assertEqual(answer, "ok mode up=blackhole down=halfclose")
        answer = yield self.commands.command("mode drop up")
        self.assertEqual(answer, "ok mode up=drop down=halfclose")

    @inlineCallbacks
    def test_errors(self):
        for command in (
            "frobnicate",
            "",
            "mode",
            "mode warp",
            "mode delay",
            "mode delay soon",
            "mode delay -1",
            "mode pass 3",
            "mode halfclose sideways",
            "mode reset up",
            "stats please",
        ):
            answer = yield self.commands.command(command)
            self.assertTrue(answer.startswith("error "), (command, answer))
        self.assertEqual(self.proxy.modes, {"up": Mode("pass"), "down": Mode("pass")})

    @inlineCallbacks
    def test_quit(self):
        answer = yield self.commands.command("quit")
        self.assertEqual(answer, "ok bye")
        yield within(self.commands.lost.wait())


class CommandTests(SynchronousTestCase):
    """
    The control commands, on a proxy that never listens.
    """

    def setUp(self):
        self.proxy = FaultProxy("127.0.0.1", 9, reactor=MemoryReactorClock())

    def test_commands(self):
        self.assertEqual(
            runCommand(self.proxy, "mode delay 2 down"), ("ok mode up=pass down=delay:2", False)
        )
        self.assertEqual(runCommand(self.proxy, "MODE pass"), ("ok mode up=pass down=pass", False))
        answer, close = runCommand(self.proxy, "help")
        self.assertTrue(answer.startswith("ok commands:"))
        self.assertEqual(runCommand(self.proxy, "quit"), ("ok bye", True))
        answer, close = runCommand(self.proxy, "bogus")
        self.assertIn("unknown command 'bogus'", answer)


class CommandLineTests(SynchronousTestCase):
    def runMain(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), reactor=MemoryReactorClock(), out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def assertUsage(self, argv, message):
        status, out, err = self.runMain(*argv)
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        self.assertIn("Usage: python -m tvlink.testing.faultproxy --listen PORT --target HOST:PORT", err)
        self.assertIn("error: " + message, err)

    def test_badArguments(self):
        self.assertUsage([], "--listen PORT is required")
        self.assertUsage(["--listen", "0"], "--target HOST:PORT is required")
        self.assertUsage(["--listen", "http", "--target", "h:1"], "--listen must be a port number")
        self.assertUsage(
            ["--listen", "70000", "--target", "h:1"], "--listen must be a port number from 0"
        )
        self.assertUsage(["--listen", "0", "--target", "nohost"], "--target must be HOST:PORT")
        self.assertUsage(
            ["--listen", "0", "--target", "h:0"], "--target port must be a port number from 1"
        )
        self.assertUsage(
            ["--listen", "0", "--target", "h:1", "--control", "x"], "--control must be a port"
        )
        self.assertUsage(
            ["--listen", "0", "--target", "h:1", "--bogus"], "option --bogus not recognized"
        )


class ProxyProcess(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.errors = b""
        self.announced = Waiters()
        self.ended = Waiters()

    def outReceived(self, data):
        self.output += data
        if b"\n" in self.output:
            self.announced.fire(self.output.split(b"\n", 1)[0].decode("ascii"))

    def errReceived(self, data):
        self.errors += data[:65536]

    def processEnded(self, reason):
        self.ended.fire(reason.value)


class ProcessTests(ProxyTestCase):
    @inlineCallbacks
    def test_runsInAnotherProcess(self):
        """
        C{python -m tvlink.testing.faultproxy} announces its ports and takes
        commands on its control port; SIGTERM stops it cleanly.
        """
        reactor = getReactor()
        process = ProxyProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        args = [
            sys.executable,
            "-m",
            "tvlink.testing.faultproxy",
            "--listen",
            "0",
            "--target",
            "%s:%d" % (HOST, self.echoPort.getHost().port),
            "--control",
            "0",
        ]
        transport = reactor.spawnProcess(process, sys.executable, args, env=env, path=ROOT)

        def kill():
            if not process.ended.fired:
                transport.signalProcess("KILL")
            return within(process.ended.wait(), 5)

        self.addCleanup(kill)
        line = yield within(process.announced.wait(), 6)
        words = dict(word.split("=", 1) for word in line.split()[1:])
        commands = ControlClient()
        endpoint = TCP4ClientEndpoint(reactor, HOST, int(words["control"]), timeout=3)
        yield within(connectProtocol(endpoint, commands))
        self.addCleanup(closeControl, commands)
        answer = yield commands.command("mode delay 0.1")
        self.assertEqual(answer, "ok mode up=delay:0.1 down=delay:0.1")
        client = yield self.connect(int(words["listen"]))
        yield self.echoed(client, b"remote")
        answer = yield commands.command("stats")
        self.assertIn(" accepted=1 ", answer)
        transport.signalProcess("TERM")
        reason = yield within(process.ended.wait(), 5)
        self.assertIsInstance(reason, ProcessDone, process.errors)
        yield within(client.readLost.wait())
