"""
The terminal API's front door against hostile clients, on real
C{twistd tvlink} processes over loopback: a flood of dripping connections
under a limit of 1,024 descriptors, a battery of hostile requests, keys
revoked by C{SIGHUP}, TLS on the HTTP endpoint, and the refusal to serve
an open API off loopback.
"""

import io
import json
import os

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS

from tests.certs import makeCertificates
from tests.processes import (
    ReactorTestCase,
    getReactor,
    pause,
    runTwistd,
    spawnPython,
    spawnTwistd,
    startPayment,
    waitUntil,
    withDeadline,
)
from tests.webkit import FAST, PAN, fetch, httpRequest, rawRequest, readResponseBody, tempdir
from tvlink.descriptors import raiseLimit
from tvlink.web.keys import KeyFile

#: twistd with its soft and hard descriptor limits set to 1,024 first.
LIMITED = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)); "
    "sys.argv = ['twistd'] + sys.argv[1:]; from twisted.scripts.twistd import run; run()"
)

HEAD_TIMEOUT = 3.0


class _Drip(Protocol):
    """
    An attacker's connection: a request line, then a header byte every
    second, for as long as the server bears it.
    """

    def connectionMade(self):
        flood = self.factory.flood
        self.opened = flood.clock.seconds()
        self.answer = b""
        self.transport.write(b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nX-Drip: ")
        self.call = flood.clock.callLater(1.0, self.drip)

    def drip(self):
        self.transport.write(b"x")
        self.call = self.factory.flood.clock.callLater(1.0, self.drip)

    def dataReceived(self, data):
        self.answer += data

    def connectionLost(self, reason):
        if self.call.active():
            self.call.cancel()
        self.factory.flood.ended(self)


class _DripFactory(ClientFactory):
    protocol = _Drip

    def __init__(self, flood):
        self.flood = flood

    def clientConnectionFailed(self, connector, reason):
        self.flood.failed(connector)


class Flood:
    """
    C{count} connections from 127.0.0.2 to C{port}, each dripping its
    headers, each opened again a second after it is closed, until
    L{stop}.
    """

    def __init__(self, port, count):
        self.clock = self.reactor = getReactor()
        self.port = port
        self.count = count
        self.running = False
        self.factory = _DripFactory(self)
        self.connectors = []
        self.attempts = 0
        #: Seconds each connection that was answered lived (first byte to close).
        self.answered = []
        self.refused = 0
        self.later = set()

    def start(self):
        self.running = True
        for _ in range(self.count):
            self.connect()

    def connect(self):
        if not self.running:
            return
        self.attempts += 1
        self.connectors.append(
            self.reactor.connectTCP("127.0.0.1", self.port, self.factory, timeout=10, bindAddress=("127.0.0.2", 0))
        )

    def ended(self, drip):
        if drip.answer:
            self.answered.append((self.clock.seconds() - drip.opened, drip.answer))
        else:
            self.refused += 1
        self.again()

    def failed(self, connector):
        self.again()

    def again(self):
        if not self.running:
            return

        def fire():
            self.later.discard(call)
            self.connect()

        call = self.clock.callLater(1.0, fire)
        self.later.add(call)

    def stop(self):
        self.running = False
        for call in self.later:
            if call.active():
                call.cancel()
        self.later = set()
        for connector in self.connectors:
            connector.disconnect()


def _keys(testCase, *terminals):
    path = os.path.join(tempdir(testCase), "keys")
    keys = KeyFile.load(path, missing_ok=True)
    made = {t: keys.add(t) for t in terminals}
    keys.write()
    return path, made


class FloodTests(ReactorTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def startPlatform(self, port, *extra):
        """
        A platform under C{RLIMIT_NOFILE} 1,024 linked to C{port}, its HTTP
        cap left to its default (from the budget).

        @return: C{(process, web port, HTTP cap)}.
        """
        soft = raiseLimit()[1]
        if soft < 2500:
            self.skipTest("this test needs 2,500 descriptors for its own connections; the limit is %d" % (soft,))
        folder = tempdir(self)
        platform = spawnPython(
            self,
            ["-c", LIMITED, "-n", "--pidfile=", "tvlink", "platform", "--connect", "127.0.0.1:%d" % (port,),
             "--http", "tcp:0:interface=127.0.0.1", "--journal", "sqlite:" + os.path.join(folder, "journal.db"),
             "--http-head-timeout", str(HEAD_TIMEOUT), "--heartbeat", "0.5", "--idle-timeout", "5", "--timeout", "5"]
            + list(extra),
            "platform (1,024 descriptors)",
        )
        match = yield platform.waitFor(r"HTTP gets at most (\d+) connections", 15)
        cap = int(match.group(1))
        self.assertLess(cap, 1024 - 64)
        match = yield platform.waitFor(r"web listening on http://127\.0\.0\.1:(\d+)/", 15)
        web = int(match.group(1))
        yield platform.waitFor(r"link 127\.0\.0\.1:%d ready" % (port,), 15)
        return platform, web, cap

    @defer.inlineCallbacks
    def restartPayment(self, payment, port):
        """
        Kill C{payment} (SIGKILL) and start it again on C{port}.

        @return: C{(new process, when it was restarted)}.
        """
        payment.signal("KILL")
        yield payment.whenEnded(10)
        restarted = getReactor().seconds()
        payment, _ = yield startPayment(self, *FAST, port=port, name="payment (restarted)")
        return payment, restarted

    def checkFlood(self, flood, platform):
        """
        Every dripping connection that was let in was answered C{408} and
        closed at the head deadline, which its drip did not stretch; the
        others were refused; the platform never ran out of descriptors.

        A connection's life is timed here from the handshake, which the
        kernel completes before the busy platform accepts it and reads its
        first byte (where the deadline starts), so one connection may
        overrun the deadline by the time it waited to be accepted. A
        deadline that each byte of the drip moved on would never fire at
        all; one that a drip stretched would show in the median.
        """
        self.assertGreater(flood.attempts, 1500)
        self.assertGreater(flood.refused, 0)
        lives = []
        for lived, answer in flood.answered:
            self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer[:100])
            lives.append(lived)
        lives.sort()
        self.assertTrue(lives)
        spread = "median %.2fs, max %.2fs of %d" % (lives[len(lives) // 2], lives[-1], len(lives))
        self.assertGreaterEqual(lives[0], HEAD_TIMEOUT - 0.5, spread)
        self.assertLess(lives[len(lives) // 2], HEAD_TIMEOUT + 1.0, spread)
        self.assertLess(lives[-1], 2 * HEAD_TIMEOUT, spread)
        self.assertFalse(platform.find(r"EMFILE|Too many open files"), platform.tail())

    @defer.inlineCallbacks
    def test_terminalsAreAnsweredThroughAFlood(self):
        """
        1,500 connections from 127.0.0.2 drip their headers. Meanwhile 100
        of 100 purchases from 127.0.0.1 are approved with p99 under 1 s, a
        payment node killed and restarted is re-linked and approving within
        20 s, and every dripping connection admitted (up to the per-client
        cap) is answered C{408} and closed within the head deadline.
        """
        payment, port = yield startPayment(self, *FAST)
        platform, web, cap = yield self.startPlatform(port)
        url = "http://127.0.0.1:%d/" % (web,)
        flood = Flood(web, 1500)
        flood.start()
        self.addCleanup(flood.stop)
        yield pause(HEAD_TIMEOUT / 2)
        latencies = []
        reactor = getReactor()

        @defer.inlineCallbacks
        def purchase(order):
            started = reactor.seconds()
            code, body = yield fetch("POST", url + "v1/payments", {"card": PAN, "amount": 1, "order": order}, seconds=15)
            return code, body, reactor.seconds() - started

        for i in range(50):
            code, body, took = yield purchase("before-%d" % (i,))
            self.assertEqual((code, body.get("state")), (200, "approved"), body)
            latencies.append(took)
        payment, restarted = yield self.restartPayment(payment, port)
        probe = 0
        while True:
            probe += 1
            code, body, took = yield purchase("probe-%d" % (probe,))
            if code == 200 and body.get("state") == "approved":
                break
            self.assertLess(reactor.seconds() - restarted, 20, "not approving 20 s after the restart: %r" % (body,))
            yield pause(0.2)
        self.assertLess(reactor.seconds() - restarted, 20)
        for i in range(50):
            code, body, took = yield purchase("after-%d" % (i,))
            self.assertEqual((code, body.get("state")), (200, "approved"), body)
            latencies.append(took)
        yield pause(HEAD_TIMEOUT + 1.5)
        flood.stop()

        latencies.sort()
        self.assertEqual(len(latencies), 100)
        self.assertLess(latencies[98], 1.0, "p99 %.3fs, max %.3fs" % (latencies[98], latencies[-1]))
        self.checkFlood(flood, platform)
        self.assertGreater(len(flood.answered), 100, (len(flood.answered), flood.refused))
        self.assertTrue(platform.find(r"limit http-max-per-client hit"), platform.tail())

    @defer.inlineCallbacks
    def test_linksKeepTheirDescriptorsWhenHTTPIsFull(self):
        """
        With the per-client cap lifted, 1,500 dripping connections fill
        the HTTP cap; the link still has descriptors: a payment node killed
        and restarted is re-linked within 20 s.
        """
        payment, port = yield startPayment(self, *FAST)
        platform, web, cap = yield self.startPlatform(port, "--http-max-per-client", "100000")
        flood = Flood(web, 1500)
        flood.start()
        self.addCleanup(flood.stop)
        yield waitUntil(lambda: platform.find(r"limit http-max-connections hit"), 15, "the HTTP cap to be reached")
        mark = platform.mark()
        payment, restarted = yield self.restartPayment(payment, port)
        yield platform.waitFor(r"link 127\.0\.0\.1:%d ready" % (port,), 20, after=mark)
        self.assertLess(getReactor().seconds() - restarted, 20)
        yield pause(HEAD_TIMEOUT + 1.5)
        flood.stop()
        self.checkFlood(flood, platform)
        self.assertGreater(len(flood.answered), cap / 2, (len(flood.answered), flood.refused))


def _battery(auth, other):
    """
    At least 100 hostile requests over every endpoint: C{(request bytes,
    what it is)}. C{auth} and C{other} are the C{Authorization} headers
    of two terminals.
    """
    order = b"battery-order"
    cases = []

    def add(what, method, path, body=b"", headers=(auth,), kind=b"application/json"):
        cases.append((httpRequest(method, path, body, headers, kind), what))

    # Every path, every method but the right one.
    for path in (b"/v1", b"/v1/payments", b"/v1/balance", b"/v1/payments/" + order, b"/v1/payments/%s/refund" % order,
                 b"/", b"/status.json", b"/metrics", b"/favicon.ico", b"/nothing", b"/v1/nothing"):
        for method in (b"PUT", b"DELETE", b"PATCH", b"TRACE", b"FOO"):
            add("%s %s" % (method, path), method, path, b"{}")
    # Paths that are not there.
    for path in (b"/v1/payments/" + b"x" * 65, b"/v1/payments/a%00b", b"/v1/payments/o/refund/more", b"/v1/../etc/passwd",
                 b"/v1/payments/%2e%2e/refund", b"//v1/payments", b"/v1/payments/%ff%fe"):
        add("GET %s" % (path,), b"GET", path)
    # Bodies of every wrong shape on each money call.
    bodies = [
        b"", b"null", b"[]", b"[1,2]", b'"a string"', b"42", b"true", b"{", b"{]", b'{"card": }', b"\xff\xfe{}",
        b'{"card": "' + PAN.encode() + b'", "amount": NaN, "order": "x"}',
        b'{"card": "' + PAN.encode() + b'", "amount": Infinity, "order": "x"}',
        b'{"card": "' + PAN.encode() + b'", "amount": 1e400, "order": "x"}',
        b'{"card": "' + PAN.encode() + b'", "amount": ' + b"9" * 5000 + b', "order": "x"}',
        b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b'{"card": ' + b"[" * 40 + b"]" * 40 + b"}",
        b"{" + b" " * 20000 + b"}",
        b'{"card": "\\ud800", "amount": 1, "order": "x"}',
        b'{"card": "6222\\u0000020000000000018", "amount": 1, "order": "x"}',
        b'{"card": 6222020000000000018, "amount": 1, "order": "x"}',
        b'{"card": "' + PAN.encode() + b'", "amount": -1, "order": "x"}',
        b'{"card": "' + PAN.encode() + b'", "amount": "1.5", "order": "x"}',
        b'{"card": "' + PAN.encode() + b'", "amount": 1, "order": "a\\nb"}',
        b'{"card": "' + PAN.encode() + b'", "amount": 1, "order": ""}',
        b'{"card": "' + PAN.encode() + b'", "amount": 1, "currency": "CNY", "order": "x"}',
        b'{"card": "' + PAN.encode() + b'", "amount": 1, "order": {"nested": 1}}',
    ]
    for body in bodies:
        add("purchase body %r" % (body[:40],), b"POST", b"/v1/payments", body)
    for body in bodies[:12]:
        add("balance body %r" % (body[:40],), b"POST", b"/v1/balance", body)
        add("refund body %r" % (body[:40],), b"POST", b"/v1/payments/%s/refund" % order, body)
    # Types a page may send cross-site, and others.
    good = json.dumps({"card": PAN, "amount": 1, "order": "typed"}).encode()
    for kind in (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=zz",
                 b"multipart/form-data", b"application/xml", b"application/json-seq", None):
        add("purchase as %s" % (kind,), b"POST", b"/v1/payments", good, kind=kind)
        add("balance as %s" % (kind,), b"POST", b"/v1/balance", b'{"card": "%s"}' % PAN.encode(), kind=kind)
    add("multipart with a JSON part", b"POST", b"/v1/payments",
        b"--zz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n" + good + b"\r\n--zz--\r\n",
        kind=b"multipart/form-data; boundary=zz")
    # No key, a wrong key, another scheme, another terminal's order.
    for headers, what in (((), "no key"), ((b"Authorization: Bearer tvk_x:y",), "a wrong key"),
                          ((b"Authorization: Basic dXNlcjpwYXNz",), "basic"), ((b"Authorization: Bearer",), "empty")):
        add("purchase with %s" % (what,), b"POST", b"/v1/payments", good, headers=headers)
        add("outcome with %s" % (what,), b"GET", b"/v1/payments/" + order, headers=headers)
        add("balance with %s" % (what,), b"POST", b"/v1/balance", b'{"card": "%s"}' % PAN.encode(), headers=headers)
    add("another terminal's outcome", b"GET", b"/v1/payments/" + order, headers=(other,))
    add("another terminal's refund", b"POST", b"/v1/payments/%s/refund" % order, b'{"amount": 1}', headers=(other,))
    add("a preflight", b"OPTIONS", b"/v1/payments", headers=(b"Origin: https://evil.example",))
    return cases


class HostileTests(ReactorTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_battery(self):
        """
        Over 100 hostile requests over every endpoint of a keyed platform:
        each is answered 4xx with a JSON object and a message, nothing is
        charged, no traceback is logged, both processes stay up and the
        books agree. Then a key revoked with C{tvlink keys} stops working
        at C{SIGHUP}, while the other still works.
        """
        from tvlink.cli.keys import main as keysMain
        from tvlink.cli.ledger import main as ledgerMain

        folder = tempdir(self)
        ledger = os.path.join(folder, "ledger.db")
        out = io.StringIO()
        self.assertEqual(ledgerMain(["--db", ledger, "init"], out=out, err=out), 0, out.getvalue())
        self.assertEqual(ledgerMain(["--db", ledger, "open", PAN, "100000"], out=out, err=out), 0, out.getvalue())
        keys, made = _keys(self, "tv-1", "tv-2")
        auth = b"Authorization: Bearer " + made["tv-1"].encode()
        other = b"Authorization: Bearer " + made["tv-2"].encode()
        payment, port = yield startPayment(self, "--ledger", "sqlite:" + ledger, *FAST)
        platform = spawnTwistd(
            self, "platform", "--connect", "127.0.0.1:%d" % (port,), "--http", "tcp:0:interface=127.0.0.1",
            "--journal", "sqlite:" + os.path.join(folder, "journal.db"), "--api-keys", keys,
            "--heartbeat", "0.5", "--idle-timeout", "5", name="platform",
        )
        match = yield platform.waitFor(r"web listening on http://127\.0\.0\.1:(\d+)/", 15)
        web = int(match.group(1))
        yield platform.waitFor(r"link 127\.0\.0\.1:%d ready" % (port,), 15)

        # The order another terminal will try to read and refund.
        status, _, body = yield rawRequest(web, httpRequest(
            b"POST", b"/v1/payments", json.dumps({"card": PAN, "amount": 100, "order": "battery-order"}).encode(), (auth,)
        ))
        self.assertEqual((status, body["state"]), (200, "approved"), body)

        cases = _battery(auth, other)
        self.assertGreaterEqual(len(cases), 100)
        failures = []
        for data, what in cases:
            answer = yield rawRequest(web, data)
            if answer is None:
                failures.append((what, "no answer"))
                continue
            status, headers, body = answer
            if not (400 <= status < 500 and isinstance(body, dict) and body.get("message")):
                failures.append((what, status, body if isinstance(body, dict) else body[:200]))
        self.assertEqual(failures, [], "%d of %d cases" % (len(failures), len(cases)))

        # Nothing charged but the one purchase: the balance says so, and the journal has one entry.
        status, _, body = yield rawRequest(web, httpRequest(b"POST", b"/v1/balance", b'{"card": "%s"}' % PAN.encode(), (auth,)))
        self.assertEqual((status, body["balance"]), (200, 100000 - 100), body)
        code, state = yield fetch("GET", "http://127.0.0.1:%d/status.json" % (web,))
        self.assertEqual(state["journal"], {"approved": 1}, state.get("journal"))
        for child in (payment, platform):
            self.assertIsNone(child.status, child.tail())
            self.assertFalse(child.find(r"Traceback|RecursionError|Unhandled"), child.tail(60))

        # Revoke tv-1's key; at SIGHUP it stops working, tv-2's goes on.
        out = io.StringIO()
        self.assertEqual(keysMain(["--file", keys, "revoke", "tv-1"], out=out, err=out), 0)
        mark = platform.mark()
        platform.signal("HUP")
        yield platform.waitFor(r"1 terminal API keys read", 10, after=mark)
        status, _, body = yield rawRequest(web, httpRequest(b"GET", b"/v1/payments/battery-order", headers=(auth,)))
        self.assertEqual((status, body["error"]), (401, "unauthorized"))
        status, _, body = yield rawRequest(web, httpRequest(b"POST", b"/v1/balance", b'{"card": "%s"}' % PAN.encode(), (other,)))
        self.assertEqual(status, 200, body)

        for child in (platform, payment):
            self.assertEqual((yield child.stop()), 0, child.tail())
        out = io.StringIO()
        self.assertEqual(ledgerMain(["--db", ledger, "check"], out=out, err=out), 0, out.getvalue())


class ExposureTests(ReactorTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_openAPIOffLoopbackDoesNotStart(self):
        child = yield runTwistd(self, "platform", "--connect", "127.0.0.1:7", "--http", "tcp:0")
        self.assertNotEqual(child.status, 0)
        self.assertIn("--api-keys", "\n".join(child.lines))

    @defer.inlineCallbacks
    def test_terminalAPIOverTLS(self):
        """
        C{--http ssl:...} serves the terminal API over TLS: a purchase by
        a client that checks the certificate is approved, and plain HTTP
        on that port gets nothing.
        """
        from twisted.web.client import Agent
        from twisted.web.http_headers import Headers
        from twisted.web.iweb import IPolicyForHTTPS
        from zope.interface import implementer

        certs = makeCertificates(os.path.join(tempdir(self), "certs"))
        payment, port = yield startPayment(self, *FAST)
        platform = spawnTwistd(
            self, "platform", "--connect", "127.0.0.1:%d" % (port,),
            "--http", "ssl:0:privateKey=%s:certKey=%s:interface=127.0.0.1" % (certs.serverKey, certs.server),
            "--journal", "sqlite:" + os.path.join(tempdir(self), "journal.db"), "--heartbeat", "0.5", name="platform",
        )
        match = yield platform.waitFor(r"web listening on https://127\.0\.0\.1:(\d+)/", 15)
        web = int(match.group(1))
        yield platform.waitFor(r"link 127\.0\.0\.1:%d ready" % (port,), 15)
        with open(certs.ca, "rb") as f:
            ca = Certificate.loadPEM(f.read())

        @implementer(IPolicyForHTTPS)
        class TrustTheTestCA:
            def creatorForNetloc(self, hostname, port):
                return optionsForClientTLS(hostname.decode("ascii"), trustRoot=ca)

        from twisted.web.client import FileBodyProducer

        agent = Agent(getReactor(), contextFactory=TrustTheTestCA())
        body = json.dumps({"card": PAN, "amount": 5, "order": "tls-1"}).encode()
        response = yield withDeadline(
            agent.request(b"POST", b"https://localhost:%d/v1/payments" % (web,),
                          Headers({b"content-type": [b"application/json"]}), FileBodyProducer(io.BytesIO(body))),
            15, "the purchase over TLS",
        )
        answer = json.loads((yield withDeadline(readResponseBody(response), 15, "its body")))
        self.assertEqual((response.code, answer["state"]), (200, "approved"), answer)
        plain = yield rawRequest(web, httpRequest(b"GET", b"/status.json"))
        self.assertTrue(plain is None or plain[0] >= 400)

