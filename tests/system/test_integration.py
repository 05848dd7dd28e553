"""
Integration tests: real twistd processes on 127.0.0.1 and real TCP.

Each test starts its own children (killed in cleanup), lets the OS pick
every port, and waits for log lines or counters with a deadline on the
real reactor; nothing sleeps. Run with C{python -m pytest
tests/system/test_integration.py} or C{python -m twisted.trial
tests.system.test_integration}.
"""

import re
import socket

from twisted.internet import defer, task

from tests.processes import (
    ReactorTestCase,
    connectRaw,
    getReactor,
    pause,
    runTwistd,
    spawnTwistd,
    startPayment,
    waitUntil,
    withDeadline,
)
from tvlink import PaymentService, PlatformService

#: A card the demo handler approves (its limit is 1000.00 per card).
PAN = "6222020000000000018"
LIMIT = 100000

#: Short timers so a whole exchange fits in a few seconds.
FAST = ("--heartbeat", "0.5", "--idle-timeout", "2")


def ready(port, role):
    return r"link 127\.0\.0\.1:%d ready \(%s\)" % (port, role)


def echoAnswered(port):
    return r"echo test on 127\.0\.0\.1:%d answered 00" % (port,)


def usageLine(child):
    """
    The C{twistd ...: reason} line twistd prints for a usage error.
    """
    for line in reversed(child.lines):
        if re.match(r"twistd\b.*?: ", line):
            return line
    return None


class _PlatformMixin:
    """
    An in-test platform linked to a payment port.
    """

    @defer.inlineCallbacks
    def platformTo(self, port, **options):
        options.setdefault("heartbeat", 0.5)
        options.setdefault("idle_timeout", 2)
        options.setdefault("timeout", 5)
        service = PlatformService(["127.0.0.1:%d" % (port,)], connect_timeout=5, **options)
        service.startService()
        self.addCleanup(service.stopService)
        link = yield withDeadline(service.whenReady(), 10, "the in-test platform to sign on")
        return service, link


class CommandLineTests(ReactorTestCase):
    """
    The installed C{tvlink} twistd plugin: help and usage errors.
    """

    @defer.inlineCallbacks
    def test_help(self):
        """
        C{twistd tvlink --help} and each role's C{--help} exit 0 and
        describe the roles and their options.
        """
        cases = [
            ((), ("payment", "platform", "sandbox")),
            (("payment",), ("--listen", "--heartbeat", "--idle-timeout", "--echo-interval")),
            (("platform",), ("--connect", "--timeout", "--heartbeat", "--idle-timeout")),
            (("sandbox",), ("--port",)),
        ]
        children = yield defer.gatherResults(
            [runTwistd(self, *(role + ("--help",))) for role, _ in cases], consumeErrors=True
        )
        for (role, words), child in zip(cases, children):
            output = "\n".join(child.lines)
            self.assertEqual(child.status, 0, output)
            for word in words:
                self.assertIn(word, output, role)
            self.assertNotIn("Traceback", output)

    @defer.inlineCallbacks
    def test_usageErrors(self):
        """
        A bad or missing option makes twistd exit non-zero with a usage
        error naming the option, and no traceback.
        """
        cases = [
            (("payment", "--listen", "tcp:0", "--heartbeat", "abc"), "--heartbeat"),
            (("payment", "--listen", "tcp:0", "--header", "bogus"), "--header"),
            (("payment", "--listen", "tcp:0", "--idle-timeout", "-1"), "--idle-timeout"),
            (("payment", "--listen", "tcp:0", "--max-frame", "0"), "--max-frame"),
            (("payment", "--listen", "tcp:0", "--bogus"), "bogus"),
            (("payment",), "--listen"),
            (("platform",), "--connect"),
            (("platform", "--connect", "nowhere"), "--connect"),
            (("platform", "--connect", "127.0.0.1:1", "--echo-interval", "x"), "--echo-interval"),
            ((), "payment"),
        ]
        children = yield defer.gatherResults(
            [runTwistd(self, *argv) for argv, _ in cases], consumeErrors=True
        )
        for (argv, option), child in zip(cases, children):
            output = "\n".join(child.lines)
            self.assertNotEqual(child.status, 0, (argv, output))
            line = usageLine(child)
            self.assertIsNotNone(line, (argv, output))
            self.assertIn(option, line, argv)
            self.assertNotIn("Traceback", output, argv)

    @defer.inlineCallbacks
    def test_portInUse(self):
        """
        A payment node that cannot listen exits non-zero naming the
        address, instead of running without a port.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        child = yield runTwistd(self, "payment", "--listen", "tcp:%d:interface=127.0.0.1" % (port,))
        output = "\n".join(child.lines)
        self.assertNotEqual(child.status, 0, output)
        self.assertIn("127.0.0.1:%d" % (port,), output)
        self.assertNotIn("payment listening", output)

    @defer.inlineCallbacks
    def test_badListenEndpoint(self):
        """
        An unparseable C{--listen} endpoint makes twistd exit non-zero,
        naming the bad endpoint, without listening.

        (It should be a usage error naming C{--listen}; today it is a
        C{ValueError} traceback from C{serverFromString} in C{makeService}.)
        """
        child = yield runTwistd(self, "payment", "--listen", "bogus:1")
        output = "\n".join(child.lines)
        self.assertNotEqual(child.status, 0, output)
        self.assertIn("bogus", output)
        self.assertNotIn("payment listening", output)


class PaymentProcessTests(_PlatformMixin, ReactorTestCase):
    """
    A real payment process, and an in-test L{PlatformService} talking to
    it over TCP.
    """

    @defer.inlineCallbacks
    def test_purchaseAndBalance(self):
        """
        The platform signs on; a purchase is approved, the balance
        inquiry reflects it, and the answers repeat the request's key.
        """
        payment, port = yield startPayment(self, *FAST)
        service, link = yield self.platformTo(port)
        ourPort = link.transport.getHost().port
        yield payment.waitFor(r"platform PLATFORM signed on over 127\.0\.0\.1:%d" % (ourPort,), 5)
        yield payment.waitFor(r"link 127\.0\.0\.1:%d ready \(payment\)" % (ourPort,), 5)

        purchase = {
            "mti": "0200",
            "proc": "000000",
            "pan": PAN,
            "amount": "%012d" % 1234,
            "currency": "156",
            "order": "IT-0001",
        }
        answer = yield withDeadline(service.request(purchase), 10, "the purchase answer")
        self.assertEqual(answer["mti"], "0210")
        self.assertEqual(answer["resp"], "00")
        self.assertEqual(answer["sender"], "PLATFORM")
        self.assertRegex(answer["stan"], r"^\d{6}$")
        self.assertRegex(answer["time"], r"^\d{10}$")

        answer = yield withDeadline(
            service.request({"mti": "0200", "proc": "300000", "pan": PAN}), 10, "the balance answer"
        )
        self.assertEqual(answer["mti"], "0210")
        self.assertEqual(answer["resp"], "00")
        self.assertEqual(answer["balance"], "%012d" % (LIMIT - 1234,))

        over = dict(purchase, amount="%012d" % LIMIT, order="IT-0002")
        answer = yield withDeadline(service.request(over), 10, "the over-limit answer")
        self.assertEqual(answer["resp"], "51")

        badCard = dict(purchase, pan="12", order="IT-0003")
        answer = yield withDeadline(service.request(badCard), 10, "the bad-card answer")
        self.assertEqual(answer["resp"], "14")

        # The link counts an answer only after its Deferred has fired, so
        # read the counter once control is back in the reactor.
        yield pause(0)
        self.assertEqual(link.counters["answered"], 5)  # sign-on and the four above
        self.assertEqual(link.counters["timedOut"], 0)
        self.assertNotIn(PAN, "\n".join(payment.lines), "unmasked PAN in the payment log")

    @defer.inlineCallbacks
    def test_burstOverOneLink(self):
        """
        A burst of requests on one link, more than a batch at each end, is
        answered whole, each answer to its own request; the link writes
        without waiting for acknowledgements (TCP_NODELAY).
        """
        payment, port = yield startPayment(self, "--max-batch", "4", *FAST)
        service, link = yield self.platformTo(port, max_batch=3)
        sock = link.transport.getHandle()
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        inquiries = [
            {"mti": "0200", "proc": "300000", "pan": PAN, "order": "BURST-%03d" % (n,)}
            for n in range(200)
        ]
        answers = yield withDeadline(
            defer.gatherResults([service.request(m) for m in inquiries]), 20, "the burst's answers"
        )
        self.assertEqual([a["resp"] for a in answers], ["00"] * 200)
        self.assertEqual(len({a["stan"] for a in answers}), 200)
        self.assertEqual(link.backlog, 0)
        self.assertEqual(link.counters["timedOut"] + link.counters["late"], 0)

    @defer.inlineCallbacks
    def test_paymentSendsEchoTests(self):
        """
        With C{--echo-interval} the payment process sends echo tests over
        the link our platform opened; we answer them C{00}.
        """
        payment, port = yield startPayment(self, "--echo-interval", "0.3", *FAST)
        service, link = yield self.platformTo(port)
        ourPort = link.transport.getHost().port
        yield waitUntil(lambda: link.counters["requestsIn"] >= 2, 5, "two echo tests from payment")
        yield payment.waitFor(echoAnswered(ourPort), 5)
        self.assertEqual(link.state, "ready")


class PlatformProcessTests(ReactorTestCase):
    """
    A real platform process, and an in-test L{PaymentService} it connects
    to.
    """

    @defer.inlineCallbacks
    def test_signOnNotificationAndEcho(self):
        """
        The platform process signs on to us; we send it a C{0820}
        notification and get C{0830}/C{00}; its echo tests reach us.
        """
        service = PaymentService("tcp:0:interface=127.0.0.1", heartbeat=0.5, idle_timeout=2, timeout=5)
        service.startService()
        self.addCleanup(service.stopService)
        port = service.port.getHost().port
        platform = spawnTwistd(
            self,
            "platform",
            "--connect",
            "127.0.0.1:%d" % (port,),
            "--echo-interval",
            "0.3",
            *FAST,
            name="platform",
        )
        link = yield withDeadline(service.whenReady(), 10, "the platform process to sign on")
        self.assertEqual(link.platform, "PLATFORM")
        yield platform.waitFor(ready(port, "platform"), 5)

        answer = yield withDeadline(
            service.request(link, {"mti": "0820", "order": "IT-0001"}), 10, "the 0830"
        )
        self.assertEqual(answer["mti"], "0830")
        self.assertEqual(answer["resp"], "00")
        self.assertEqual(answer["sender"], "PAYMENT")
        yield platform.waitFor(r"notification PAYMENT/%s/" % (answer["stan"],), 5)

        yield platform.waitFor(echoAnswered(port), 5)
        # The sign-on and at least two echo tests arrived on our side.
        yield waitUntil(lambda: link.counters["requestsIn"] >= 3, 5, "echo tests from the platform")
        self.assertEqual(service.readyLinks(), [link])


class TwoProcessTests(ReactorTestCase):
    """
    Both roles as real processes.
    """

    @defer.inlineCallbacks
    def test_reconnectAfterPaymentKilled(self):
        """
        Requests flow both ways; when the payment process dies the
        platform notices, retries, and links up again with a payment
        process restarted on the same port.
        """
        echoes = ("--echo-interval", "0.3") + FAST
        payment, port = yield startPayment(self, *echoes)
        platform = spawnTwistd(
            self, "platform", "--connect", "127.0.0.1:%d" % (port,), *echoes, name="platform"
        )
        match = yield platform.waitFor(ready(port, "platform"), 10)
        yield platform.waitFor(echoAnswered(port), 5, after=match.index)
        match = yield payment.waitFor(r"link 127\.0\.0\.1:(\d+) ready \(payment\)", 5)
        platformPort = int(match.group(1))
        yield payment.waitFor(echoAnswered(platformPort), 5)

        mark = platform.mark()
        payment.signal("KILL")
        status = yield payment.whenEnded(5)
        self.assertEqual(status, -9)
        yield platform.waitFor(r"link 127\.0\.0\.1:%d lost" % (port,), 5, after=mark)
        yield platform.waitFor(r"link to 127\.0\.0\.1:%d retrying in" % (port,), 5, after=mark)

        mark = platform.mark()
        again, samePort = yield startPayment(self, *echoes, port=port, name="payment (restarted)")
        self.assertEqual(samePort, port)
        match = yield platform.waitFor(ready(port, "platform"), 15, after=mark)
        yield platform.waitFor(echoAnswered(port), 5, after=match.index)
        match = yield again.waitFor(r"link 127\.0\.0\.1:(\d+) ready \(payment\)", 5)
        platformPort = int(match.group(1))
        yield again.waitFor(echoAnswered(platformPort), 5)

        # A clean stop: on SIGTERM the platform closes its link and shuts
        # down (twistd then re-raises the signal, so the status is -15);
        # the payment side forgets the link and keeps listening.
        status = yield platform.stop()
        self.assertIn(status, (0, -15), platform.tail())
        self.assertTrue(platform.find(r"Server Shut Down"), platform.tail())
        yield again.waitFor(r"link 127\.0\.0\.1:%d lost" % (platformPort,), 5)
        self.assertTrue(again.running)


class IdleTests(ReactorTestCase):
    """
    Liveness against a raw client that runs no tvlink code.
    """

    @defer.inlineCallbacks
    def test_readIdleClosesSilentClient(self):
        """
        A client that sends nothing is disconnected once the payment
        side's idle timeout passes.
        """
        payment, port = yield startPayment(self, "--idle-timeout", "1", "--heartbeat", "5")
        client = yield connectRaw(self, port)
        yield client.whenLost(5, "the payment side to drop a silent client")
        elapsed = client.lostAt - client.connectedAt
        self.assertGreaterEqual(elapsed, 0.8)
        self.assertLessEqual(elapsed, 3.0)
        self.assertEqual(client.frames, [])
        yield payment.waitFor(r"link 127\.0\.0\.1:%d heard nothing for" % (client.peerPort,), 5)

    @defer.inlineCallbacks
    def test_heartbeatsToSilentClient(self):
        """
        A payment side that has written nothing for C{--heartbeat}
        seconds writes an idle query, C{0000}, and keeps doing so.
        """
        payment, port = yield startPayment(self, "--heartbeat", "0.3", "--idle-timeout", "10")
        client = yield connectRaw(self, port)
        yield waitUntil(lambda: len(client.frames) >= 3, 5, "three idle queries")
        elapsed = getReactor().seconds() - client.connectedAt
        self.assertEqual(set(client.frames), {b""})
        self.assertGreaterEqual(elapsed, 0.6)  # not a flood: about one per 0.3 s
        self.assertFalse(client.lost)

    @defer.inlineCallbacks
    def test_clientHeartbeatsKeepLinkAlive(self):
        """
        Idle queries from the peer keep the link alive past the idle
        timeout and are never answered; once they stop, the link is
        dropped.
        """
        payment, port = yield startPayment(self, "--idle-timeout", "1", "--heartbeat", "5")
        client = yield connectRaw(self, port)
        beat = task.LoopingCall(client.sendRaw, b"0000")
        beat.start(0.25)
        self.addCleanup(lambda: beat.running and beat.stop())
        yield pause(2.5)
        self.assertFalse(client.lost, "link dropped although the client kept sending 0000")
        self.assertEqual(client.frames, [], "the payment side answered an idle query")
        beat.stop()
        stopped = getReactor().seconds()
        yield client.whenLost(5, "the payment side to drop the client once it fell silent")
        self.assertLessEqual(client.lostAt - stopped, 3.0)


class BadInputTests(_PlatformMixin, ReactorTestCase):
    """
    Malformed input from a raw client against a real payment process.
    """

    @defer.inlineCallbacks
    def test_protocolViolations(self):
        """
        A header that is not a length, or one over C{--max-frame}, closes
        that connection and is logged with the peer's address; a
        well-behaved platform link on the same process is unaffected.
        """
        payment, port = yield startPayment(self, "--max-frame", "512", *FAST)
        service, link = yield self.platformTo(port)

        digits = yield connectRaw(self, port)
        digits.sendRaw(b"12ab{}")
        yield digits.whenLost(5, "the payment side to close after a non-digit header")
        yield payment.waitFor(
            r"protocol violation from 127\.0\.0\.1:%d: .*not four decimal digits" % (digits.peerPort,), 5
        )

        large = yield connectRaw(self, port)
        large.sendRaw(b"0513")
        yield large.whenLost(5, "the payment side to close after an oversized header")
        yield payment.waitFor(
            r"protocol violation from 127\.0\.0\.1:%d: frame of 513 bytes exceeds the maximum of 512"
            % (large.peerPort,),
            5,
        )

        answer = yield withDeadline(
            service.request({"mti": "0200", "proc": "300000", "pan": PAN}), 10, "a balance inquiry"
        )
        self.assertEqual(answer["resp"], "00")
        self.assertEqual(service.readyLinks(), [link])

    @defer.inlineCallbacks
    def test_incompleteFrame(self):
        """
        A frame that starts but does not finish within C{--frame-timeout}
        is a protocol violation (slow-drip defence), even though the idle
        timeout is far off.
        """
        payment, port = yield startPayment(
            self, "--frame-timeout", "1", "--idle-timeout", "20", "--heartbeat", "10"
        )
        client = yield connectRaw(self, port)
        client.sendRaw(b'0040{"mti":"0800"')
        started = getReactor().seconds()
        yield client.whenLost(5, "the payment side to close a half-sent frame")
        self.assertLessEqual(client.lostAt - started, 3.0)
        yield payment.waitFor(
            r"protocol violation from 127\.0\.0\.1:%d: frame incomplete" % (client.peerPort,), 5
        )

    @defer.inlineCallbacks
    def test_formatErrors(self):
        """
        A body that is not a usable message is answered C{30} when its key
        can be read and dropped otherwise; the link stays up either way,
        and another platform's link keeps working.
        """
        payment, port = yield startPayment(self, *FAST)
        service, link = yield self.platformTo(port)
        client = yield connectRaw(self, port)

        client.sendMessage(
            {"mti": "0800", "nmi": "001", "sender": "RAW", "stan": "000001", "time": "0101000000"}
        )
        answer = yield client.nextMessage()
        self.assertEqual((answer["mti"], answer["resp"], answer["stan"]), ("0810", "00", "000001"))

        # Readable key, unusable content: answered 30.
        client.sendMessage(
            {
                "mti": "0200",
                "proc": "000000",
                "sender": "RAW",
                "stan": "000002",
                "time": 101000000,
                "pan": PAN,
                "amount": "%012d" % 100,
            }
        )
        answer = yield client.nextMessage()
        self.assertEqual(answer, {"mti": "0210", "sender": "RAW", "stan": "000002", "resp": "30"})

        client.sendFrame(
            b'{"mti":"0200","proc":"000000","sender":"RAW","stan":"000003",'
            b'"time":"0101000000","order":"\xff\xfe"}'
        )
        answer = yield client.nextMessage()
        self.assertEqual(
            answer,
            {"mti": "0210", "sender": "RAW", "stan": "000003", "time": "0101000000", "resp": "30"},
        )

        # No key to answer with: dropped, nothing sent back.
        dropped = [
            b"not json at all",
            b"[1, 2, 3]",
            b'"a string"',
            b'{"mti":"0200","sender":"RAW","stan":4,"time":"0101000000"}',
            b'{"sender":"RAW","stan":"000005","time":"0101000000"}',
            b'{"mti":"02x0","sender":"RAW","stan":"000006","time":"0101000000"}',
            b'{"mti":"0200","sender":"RAW","stan":"000007","time":"0101000000","pan":',
        ]
        for body in dropped:
            client.sendFrame(body)
        client.sendMessage(
            {"mti": "0800", "nmi": "301", "sender": "RAW", "stan": "000008", "time": "0101000000"}
        )
        answer = yield client.nextMessage()
        # The echo's answer is the very next frame: none of the dropped
        # bodies was answered, and the link survived them all.
        self.assertEqual((answer["mti"], answer["resp"], answer["stan"]), ("0810", "00", "000008"))
        self.assertEqual(client.frames, [])
        self.assertFalse(client.lost)

        pattern = r"format error from 127\.0\.0\.1:%d: .*; " % (client.peerPort,)
        yield waitUntil(
            lambda: len(payment.find(pattern)) >= 2 + len(dropped), 5, "every format error logged"
        )
        self.assertEqual(len(payment.find(pattern + "answering 30")), 2)
        self.assertEqual(len(payment.find(pattern + r"dropped \(no key to answer\)")), len(dropped))
        self.assertEqual(payment.find(r"protocol violation"), [])

        answer = yield withDeadline(
            service.request(
                {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "%012d" % 500, "currency": "156"}
            ),
            10,
            "a purchase on the well-behaved link",
        )
        self.assertEqual(answer["resp"], "00")
        self.assertEqual(service.readyLinks(), [link])
        self.assertEqual(link.counters["formatErrors"], 0)
