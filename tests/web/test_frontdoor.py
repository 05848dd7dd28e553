"""
The front door of the web side, driven in memory: deadlines a drip cannot
stretch, connection caps, body limits, types, depth, cross-origin calls,
and terminal keys.
"""

import json
import os

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.web.test_web import PAN, Counting, WebRig, answer
from tests.webkit import tempdir
from tvlink import PaymentService
from tvlink.descriptors import DescriptorBudget, raiseLimit
from tvlink.link.limits import ConnectionCaps
from tvlink.web.access import Access, Origins
from tvlink.web.frontdoor import FrontDoor
from tvlink.web.keys import KeyFile, KeyFileError, TerminalKeys
from tvlink.web.responses import JSONResource, writeJSON
from tvlink.web.service import HTTPService
from tvlink.web.validation import MAX_DEPTH, nesting


class _Echo(JSONResource):
    """
    Answers every POST with the length of its body; C{/slow} is answered
    only when told.
    """

    isLeaf = True

    def __init__(self):
        JSONResource.__init__(self)
        self.held = []

    def render_POST(self, request):
        if request.path == b"/slow":
            self.held.append(request)
            return 1  # NOT_DONE_YET
        writeJSON(request, 200, {"length": len(request.content.read())})
        return 1

    render_GET = render_POST


class Door:
    """
    An L{HTTPService}'s connection factory on a L{Clock}, with
    connections made on L{StringTransport}s.
    """

    def __init__(self, **limits):
        self.clock = Clock()
        self.resource = _Echo()
        limits.setdefault("max_connections", 10)
        self.service = HTTPService("tcp:0", self.resource, reactor=self.clock, door=FrontDoor(**limits))
        self.factory = self.service.factory

    def connect(self, host="127.0.0.1", port=40000):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, port))
        if protocol is None:
            return None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return protocol, transport


def _request(path=b"/", body=b"", kind=b"application/json", extra=b""):
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
        % (path, kind, len(body), extra, body)
    )


def _answers(transport):
    """
    The status codes and JSON bodies written on C{transport}.
    """
    data = transport.value()
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        out.append((status, json.loads(rest[:length]) if length else None))
        data = rest[length:]
    return out


class DeadlineTests(SynchronousTestCase):
    def drip(self, door, first, byte, seconds):
        """
        Send C{first}, then C{byte} every second: the connection stays
        open until C{seconds} have passed, and closes then.
        """
        protocol, transport = door.connect()
        protocol.dataReceived(first)
        for _ in range(seconds - 1):
            door.clock.advance(1)
            protocol.dataReceived(byte)
        self.assertFalse(transport.disconnecting)
        door.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        return transport

    def test_dripHeadIsCutAtTheHeadDeadline(self):
        """
        A client that sends a request line and then a byte of header every
        second is answered C{408} and disconnected C{head_timeout} after
        its first byte, although each byte would reset an idle timeout.
        """
        door = Door(head_timeout=10, idle_timeout=30)
        transport = self.drip(door, b"POST / HTTP/1.1\r\n", b"X", 10)
        [(status, body)] = _answers(transport)
        self.assertEqual((status, body["error"]), (408, "timeout"))
        self.assertIn("head", body["message"])
        self.assertEqual(door.factory.limits.hits, {"http-head-timeout": 1})

    def test_dripBodyIsCutAtTheBodyDeadline(self):
        door = Door(body_timeout=5)
        head = b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        transport = self.drip(door, head, b" ", 5)
        self.assertEqual(_answers(transport)[0][0], 408)

    def test_bodyDeadlineRunsFromTheEndOfTheHead(self):
        """
        The body's deadline starts when the head is complete: a head that
        took most of its own deadline does not shorten the body's, and the
        head's deadline no longer applies.
        """
        door = Door(head_timeout=10, body_timeout=5, idle_timeout=30)
        protocol, transport = door.connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nContent-Type: application/json\r\n")
        door.clock.advance(8)
        protocol.dataReceived(b"Content-Length: 100\r\n\r\n{")
        door.clock.advance(4.5)
        self.assertFalse(transport.disconnecting)
        door.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        [(status, body)] = _answers(transport)
        self.assertEqual((status, body["error"]), (408, "timeout"))
        self.assertIn("body did not arrive within 5s", body["message"])
        self.assertEqual(door.factory.limits.hits, {"http-body-timeout": 1})

    def test_localAddressLookedUpOnce(self):
        """
        The channel asks its transport for the local address once, however
        many requests ask it.
        """
        door = Door()
        protocol, transport = door.connect()
        asked = []
        original = transport.getHost
        transport.getHost = lambda: asked.append(1) or original()
        for _ in range(3):
            protocol.dataReceived(_request(body=b"{}"))
        self.assertEqual([s for s, _ in _answers(transport)], [200, 200, 200])
        self.assertEqual(len(asked), 1)

    def test_keepAliveIdleTimeout(self):
        """
        Requests one after the other on a connection are answered; the
        connection is closed once idle for C{idle_timeout}, not before.
        """
        door = Door(idle_timeout=30, head_timeout=10)
        protocol, transport = door.connect()
        for i in range(3):
            protocol.dataReceived(_request(body=b"{}"))
            door.clock.advance(29)
        self.assertEqual([s for s, _ in _answers(transport)], [200, 200, 200])
        self.assertFalse(transport.disconnecting)
        door.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)

    def test_slowAnswerIsNotTheClientsFault(self):
        """
        While the API takes its time to answer, neither deadline runs,
        even with the next request already sent behind it.
        """
        door = Door(head_timeout=2, body_timeout=2, idle_timeout=3)
        protocol, transport = door.connect()
        protocol.dataReceived(_request(b"/slow", b"{}"))
        protocol.dataReceived(_request(body=b"{}"))
        door.clock.advance(50)
        self.assertFalse(transport.disconnecting)
        [held] = door.resource.held
        writeJSON(held, 200, {"late": True})
        self.assertEqual([s for s, _ in _answers(transport)], [200, 200])

    def test_bodyOverTheLimitIsRefusedAtOnce(self):
        """
        A body declared longer than the limit is refused C{413} before it
        is sent, and one sent in chunks as soon as it passes the limit;
        nothing of it is kept.
        """
        door = Door(max_body=100)
        protocol, transport = door.connect()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        [(status, body)] = _answers(transport)
        self.assertEqual((status, body["error"]), (413, "too-large"))
        protocol, transport = door.connect(port=40001)
        protocol.dataReceived(b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            protocol.dataReceived(b"28\r\n" + b" " * 40 + b"\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(_answers(transport)[0][0], 413)


class CapTests(SynchronousTestCase):
    def test_capsInAllAndPerClient(self):
        """
        Beyond C{max_per_client} connections from one address, and beyond
        C{max_connections} in all, a new connection is closed as soon as it
        is accepted; closing one makes room again.
        """
        door = Door(max_connections=5, max_per_client=3)
        first = [door.connect("10.0.0.1", 1000 + i) for i in range(4)]
        self.assertEqual([c is None for c in first], [False, False, False, True])
        others = [door.connect("10.0.0.2", 2000 + i) for i in range(3)]
        self.assertEqual([c is None for c in others], [False, False, True])
        self.assertEqual(door.factory.limits.hits, {"http-max-per-client": 1, "http-max-connections": 1})
        protocol, transport = first[0]
        protocol.connectionLost(None)
        self.assertIsNotNone(door.connect("10.0.0.2", 3000))
        self.assertEqual(door.factory.caps.byHost, {"10.0.0.1": 2, "10.0.0.2": 3})

    def test_metrics(self):
        """
        The front door's figures are in the metrics of the tree it serves.
        """
        from prometheus_client import generate_latest

        from tvlink.web.tree import paymentResource

        clock = Clock()
        payment = PaymentService("tcp:0", reactor=clock)
        root = paymentResource(payment)
        service = HTTPService("tcp:0", root, reactor=clock, door=FrontDoor(max_connections=2, max_per_client=1))
        service.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1)).makeConnection(StringTransport())
        self.assertIsNone(service.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 2)))
        text = generate_latest(root.registry).decode("ascii")
        self.assertIn("tvlink_http_connections 1.0", text)
        self.assertIn("tvlink_http_connections_max 2.0", text)
        self.assertIn('tvlink_http_refused_total{limit="http-max-per-client"} 1.0', text)

    def test_connectionCaps(self):
        caps = ConnectionCaps(2, 1, ("all", "each"))
        self.assertIsNone(caps.admit("a"))
        self.assertEqual(caps.admit("a"), "each")
        self.assertIsNone(caps.admit("b"))
        self.assertEqual(caps.admit("c"), "all")
        caps.release("a")
        self.assertEqual((caps.open, caps.byHost), (1, {"b": 1}))

    def test_budget(self):
        """
        The HTTP cap is three quarters of what links and the reserve
        leave, never below 1; the soft limit is never lowered.
        """
        self.assertEqual(DescriptorBudget(1024, links=4).httpConnections(), 717)
        self.assertEqual(DescriptorBudget(1024, links=1000).httpConnections(), 1)
        before, after = raiseLimit()
        self.assertGreaterEqual(after, before)


class InputTests(SynchronousTestCase):
    def test_onlyJSONMovesMoney(self):
        """
        Each type a page may send cross-site without a preflight, and a
        body with no type, is refused C{415} on every money call; nothing
        is sent. A charset parameter is fine.
        """
        rig = WebRig(self)
        body = {"card": PAN, "amount": 100, "order": "t-1"}
        for kind in (
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"application/jsonp",
            b"",
            None,
        ):
            for path in ("/v1/payments", "/v1/balance", "/v1/payments/t-1/refund"):
                code, error = answer(rig.call("POST", path, body, headers={b"content-type": kind}))
                self.assertEqual((code, error["error"], error["field"]), (415, "unsupported-type", "content-type"), kind)
                self.assertIn("application/json", error["message"])
        self.assertEqual(rig.handler.seen, [])
        code, reply = answer(rig.call("POST", "/v1/payments", body, headers={b"content-type": b"Application/JSON; charset=utf-8"}))
        self.assertEqual((code, reply["state"]), (200, "approved"))

    def test_depth(self):
        """
        A body nested deeper than L{MAX_DEPTH} is refused C{400} before it
        is parsed (no C{RecursionError}); brackets in strings do not count.
        """
        rig = WebRig(self)
        for raw in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 40 + b"1" + b"}" * 40, b"[" * 16000):
            code, error = answer(rig.call("POST", "/v1/payments", raw))
            self.assertEqual((code, error["field"]), (400, "body"))
            self.assertIn("nested", error["message"])
        self.assertEqual(nesting(b'{"order": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}'), 1)
        ok = {"card": PAN, "amount": 1, "order": "[" * 40}
        code, reply = answer(rig.call("POST", "/v1/payments", ok))
        self.assertEqual(code, 200)
        code, error = answer(rig.call("POST", "/v1/payments", b"[" * MAX_DEPTH + b"]" * MAX_DEPTH))
        self.assertEqual((code, error["field"]), (400, "body"))
        self.assertIn("JSON object", error["message"])

    def test_everyRefusalIsJSON(self):
        """
        Unknown paths, wrong methods and status pages posted to are all
        answered with a JSON object and a message.
        """
        rig = WebRig(self)
        for method, path in [
            ("GET", "/nothing"), ("POST", "/"), ("DELETE", "/status.json"), ("PUT", "/metrics"),
            ("POST", "/favicon.ico"), ("GET", "/v1/nothing"), ("PATCH", "/v1/payments"), ("TRACE", "/v1"),
        ]:
            code, body = answer(rig.call(method, path))
            self.assertTrue(400 <= code < 500, (method, path, code))
            self.assertIsInstance(body, dict, (method, path))
            self.assertTrue(body["message"], (method, path))


class OriginTests(SynchronousTestCase):
    def test_noCORSUnlessAllowed(self):
        rig = WebRig(self)
        request = rig.call("POST", "/v1/balance", {"card": PAN}, headers={b"origin": b"https://evil.example"})
        self.assertEqual(answer(request)[0], 200)
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"access-control-allow-origin"))
        code, error = answer(rig.call("OPTIONS", "/v1/payments", headers={b"origin": b"https://evil.example"}))
        self.assertEqual((code, error["error"]), (403, "forbidden"))

    def test_allowedOrigin(self):
        rig = WebRig(self)
        rig.api.access = Access(origins=Origins(["https://shop.example"]))
        request = rig.call("OPTIONS", "/v1/payments", headers={b"origin": b"https://shop.example"})
        self.assertEqual(request.responseCode, 204)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"access-control-allow-origin"), [b"https://shop.example"])
        self.assertIn(b"Authorization", request.responseHeaders.getRawHeaders(b"access-control-allow-headers")[0])
        request = rig.call("POST", "/v1/balance", {"card": PAN}, headers={b"origin": b"https://shop.example"})
        self.assertEqual(request.responseHeaders.getRawHeaders(b"access-control-allow-origin"), [b"https://shop.example"])
        request = rig.call("POST", "/v1/balance", {"card": PAN}, headers={b"origin": b"https://other.example"})
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"access-control-allow-origin"))


def _keyed(testCase, *terminals):
    path = os.path.join(tempdir(testCase), "keys")
    keys = KeyFile.load(path, missing_ok=True)
    made = [keys.add(t) for t in terminals]
    keys.write()
    return path, made


class KeyTests(SynchronousTestCase):
    def test_keyFile(self):
        """
        A key is shown once; the file keeps its digest only, mode 600;
        revoking removes it; malformed files are refused with the line.
        """
        path, (key,) = _keyed(self, "tv-1")
        text = open(path).read()
        self.assertNotIn(key.split(":")[1], text)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        keys = KeyFile.load(path)
        self.assertEqual(list(keys.entries), ["tv-1"])
        self.assertRaises(KeyFileError, keys.add, "tv-1")
        self.assertRaises(KeyFileError, keys.add, "../x")
        self.assertRaises(KeyFileError, keys.revoke, "tv-2")
        keys.revoke("tv-1")
        keys.write()
        self.assertEqual(KeyFile.load(path).entries, {})
        with open(path, "a") as f:
            f.write("tv-3 md5:abc 2026\n")
        e = self.assertRaises(KeyFileError, KeyFile.load, path)
        self.assertIn("line 2", str(e))
        self.assertRaises(KeyFileError, KeyFile.load, path + ".missing")

    def test_terminalFor(self):
        path, (one, two) = _keyed(self, "tv-1", "tv-2")
        keys = TerminalKeys(path)
        self.assertEqual(keys.terminalFor(b"Bearer " + one.encode()), "tv-1")
        self.assertEqual(keys.terminalFor(b"bearer " + two.encode()), "tv-2")
        # Another terminal's secret under this id; a changed secret; other schemes.
        forged = "tvk_tv-1:" + two.split(":")[1]
        changed = one[:-1] + ("B" if one.endswith("A") else "A")
        for header in (forged.encode(), changed.encode(), b"", None, b"Basic " + one.encode(), b"Bearer \xff"):
            self.assertIsNone(keys.terminalFor(header if header is None or b" " in header else b"Bearer " + header))

    def test_reloadKeepsKeysOfABadFile(self):
        path, (one,) = _keyed(self, "tv-1")
        keys = TerminalKeys(path)
        with open(path, "w") as f:
            f.write("garbage\n")
        self.assertFalse(keys.reload())
        self.assertEqual(keys.terminalFor(b"Bearer " + one.encode()), "tv-1")


class TerminalScopeTests(SynchronousTestCase):
    def rig(self):
        path, (one, two) = _keyed(self, "tv-1", "tv-2")
        rig = WebRig(self, handler=Counting())
        rig.api.access = Access(TerminalKeys(path))
        return rig, {"tv-1": b"Bearer " + one.encode(), "tv-2": b"Bearer " + two.encode()}

    def test_unauthorized(self):
        """
        Without a valid key, every call under C{/v1} is C{401} in JSON
        with a C{WWW-Authenticate} challenge, and nothing is sent.
        """
        rig, auth = self.rig()
        for header in (None, b"Bearer nope", auth["tv-1"] + b"x"):
            for method, path, body in [
                ("POST", "/v1/payments", {"card": PAN, "amount": 1, "order": "o"}),
                ("GET", "/v1/payments/o", None),
                ("POST", "/v1/payments/o/refund", {"amount": 1}),
                ("POST", "/v1/balance", {"card": PAN}),
                ("GET", "/v1", None),
            ]:
                request = rig.call(method, path, body, headers={b"authorization": header})
                code, error = answer(request)
                self.assertEqual((code, error["error"]), (401, "unauthorized"), (header, path))
                self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"), [b'Bearer realm="tvlink"'])
        self.assertEqual(rig.handler.seen, [])

    def test_rateLimit(self):
        """
        With a rate, a terminal's calls beyond it are answered C{429} with
        C{Retry-After} and nothing is sent; another terminal is not held
        back; tokens come back with time.
        """
        from tvlink.web.access import RateLimit

        rig, auth = self.rig()
        rig.api.access.rate = RateLimit(2, rig.reactor)
        calls = [rig.call("POST", "/v1/balance", {"card": PAN}, headers={b"authorization": auth["tv-1"]}) for _ in range(3)]
        self.assertEqual([answer(c)[0] for c in calls], [200, 200, 429])
        code, error = answer(calls[2])
        self.assertEqual(error["error"], "rate-limited")
        self.assertEqual(calls[2].responseHeaders.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual(len(rig.handler.seen), 2)
        self.assertEqual(answer(rig.call("POST", "/v1/balance", {"card": PAN}, headers={b"authorization": auth["tv-2"]}))[0], 200)
        rig.reactor.advance(0.5)
        self.assertEqual(answer(rig.call("POST", "/v1/balance", {"card": PAN}, headers={b"authorization": auth["tv-1"]}))[0], 200)
        self.assertEqual(answer(rig.call("POST", "/v1/balance", {"card": PAN}, headers={b"authorization": auth["tv-1"]}))[0], 429)

    def test_ordersArePerTerminal(self):
        """
        An order belongs to the terminal that made it: another terminal
        reading or refunding it gets C{404}; the same order id from another
        terminal is another purchase. The journal notes each entry's
        terminal.
        """
        rig, auth = self.rig()
        body = {"card": PAN, "amount": 500, "order": "shared-1"}
        code, reply = answer(rig.call("POST", "/v1/payments", body, headers={b"authorization": auth["tv-1"]}))
        self.assertEqual((code, reply["state"]), (200, "approved"))
        code, error = answer(rig.call("GET", "/v1/payments/shared-1", headers={b"authorization": auth["tv-2"]}))
        self.assertEqual(code, 404)
        code, error = answer(
            rig.call("POST", "/v1/payments/shared-1/refund", {"amount": 100}, headers={b"authorization": auth["tv-2"]})
        )
        self.assertEqual(code, 404)
        code, mine = answer(rig.call("GET", "/v1/payments/shared-1", headers={b"authorization": auth["tv-1"]}))
        self.assertEqual((code, mine["state"]), (200, "approved"))
        code, other = answer(rig.call("POST", "/v1/payments", body, headers={b"authorization": auth["tv-2"]}))
        self.assertEqual((code, other["state"], other.get("repeated")), (200, "approved", None))
        code, again = answer(rig.call("POST", "/v1/payments", body, headers={b"authorization": auth["tv-1"]}))
        self.assertTrue(again["repeated"])
        self.assertEqual(len(rig.handler.purchases()), 2)
        entries = self.successResultOf(rig.service.journal.byOrder("shared-1", "tv-1"))
        self.assertEqual([e["terminal"] for e in entries], ["tv-1"])
        entries = self.successResultOf(rig.service.journal.byOrder("shared-1", "tv-2"))
        self.assertEqual([e["terminal"] for e in entries], ["tv-2"])


class BackpressureTests(SynchronousTestCase):
    def test_saturatedPlatformAnswers503AtOnce(self):
        """
        With C{max_calls} calls in progress (their answers held by the
        payment side), the next call of any kind is answered C{503} with
        C{Retry-After} at once, before anything is journalled or sent; the
        calls in progress all end approved, each with its journal entry.
        """
        from tests.web.test_web import Held

        handler = Held()
        rig = WebRig(self, handler=handler)
        rig.api.max_calls = 3
        held = [rig.purchase(order="held-%d" % i) for i in range(3)]
        self.assertEqual([r.finished for r in held], [False] * 3)
        for request in (rig.purchase(order="extra"), rig.call("POST", "/v1/balance", {"card": PAN})):
            code, error = answer(request)
            self.assertEqual((code, error["error"]), (503, "busy"))
            self.assertEqual(request.responseHeaders.getRawHeaders(b"retry-after"), [b"1"])
        self.assertEqual(len(handler.seen), 3)
        handler.release()
        rig.pool.flush()
        self.assertEqual([answer(r)[1]["state"] for r in held], ["approved"] * 3)
        counts = self.successResultOf(rig.service.journal.counts())
        self.assertEqual(counts, {"approved": 3})
        self.assertEqual(self.successResultOf(rig.service.journal.byOrder("extra")), [])
        self.assertEqual(rig.api.results[("purchase", "busy")], 1)
        again = rig.purchase(order="extra")
        handler.release()
        rig.pool.flush()
        code, reply = answer(again)
        self.assertEqual((code, reply["state"]), (200, "approved"))


class OneAnswerTests(SynchronousTestCase):
    def test_bodyOverTheLimitInOneReadIsAnsweredOnce(self):
        """
        A body over the limit that arrives whole with its head is answered
        C{413} once: the request is not rendered as well.
        """
        door = Door(max_body=100)
        protocol, transport = door.connect()
        protocol.dataReceived(_request(body=b"{" + b" " * 300 + b"}"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual([status for status, _ in _answers(transport)], [413])
