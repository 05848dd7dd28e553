"""
The status pages as a person sees them: opened in headless Chromium
(Debian's C{chromium}, which C{.ci/run} installs when missing), over real
HTTP, with a real payment process behind the platform.
"""

import os
import shutil
import tempfile
from html.parser import HTMLParser

from twisted.internet import defer

from tests.processes import ReactorTestCase, TwistdProcess, getReactor, startPayment, waitUntil
from tests.webkit import FAST, PAN, PlatformWeb, fetch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """
    What a person reads on a status page: the banner, and each table row
    as its cells' text (with the row's C{data-*} attributes).
    """

    def __init__(self, dom):
        HTMLParser.__init__(self, convert_charrefs=True)
        self.banner = None
        self.headers = []
        self.rows = []
        self.text = []
        self._in = None
        self._row = None
        self._cell = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == "banner":
            self._in = "banner"
            self.banner = ""
        elif tag == "tr" and "link" in (attrs.get("class") or ""):
            self._row = {"attrs": attrs, "cells": []}
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "p" and self._in == "banner":
            self._in = None
        elif tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            if tag == "th":
                self.headers.append(text)
            elif self._row is not None:
                self._row["cells"].append(text)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in == "banner":
            self.banner += data
        if self._cell is not None:
            self._cell.append(data)

    def row(self, **attrs):
        """
        The cells of the row whose data attributes match, by column header
        (the first table's headers).
        """
        for row in self.rows:
            if all(row["attrs"].get("data-" + k) == v for k, v in attrs.items()):
                return dict(zip(self.headers, row["cells"]))
        return None


@defer.inlineCallbacks
def openInChromium(testCase, url, seconds=60.0):
    """
    Load C{url} in headless Chromium and fire with the DOM it built.
    """
    profile = tempfile.mkdtemp(prefix="tvlink-chromium-")
    testCase.addCleanup(shutil.rmtree, profile, True)
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--user-data-dir=" + profile,
        "--dump-dom",
        url,
    ]
    child = TwistdProcess("chromium")
    getReactor().spawnProcess(child, CHROMIUM, argv, env=dict(os.environ), path=profile)
    testCase.addCleanup(child.stop)
    status = yield child.whenEnded(seconds)
    dom = "\n".join(child.stdout)
    testCase.assertEqual(status, 0, child.tail())
    testCase.assertIn("<html", dom, child.tail())
    return dom


class StatusPageInBrowserTests(ReactorTestCase, PlatformWeb):
    """
    Both roles' status pages, read the way a person reads them.
    """

    timeout = 120

    def setUp(self):
        if CHROMIUM is None:
            raise self.skipTest(
                "chromium is not installed (.ci/run installs Debian's chromium; "
                "by hand: apt-get install chromium)"
            )

    @defer.inlineCallbacks
    def test_linksAndTheirStates(self):
        """
        The platform's page shows its link to the payment endpoint as
        ready, with its round trip; the payment node's page shows the
        platform connected; once the payment node is gone the platform's
        page says no link is ready and shows the link reconnecting.
        """
        payment, port = yield startPayment(self, "--http", "tcp:0:interface=127.0.0.1", *FAST)
        match = yield payment.waitFor(r"web listening on http://127\.0\.0\.1:(\d+)/", 10)
        paymentUrl = "http://127.0.0.1:%s/" % (match.group(1),)
        service, url = yield self.platformWeb(port)
        code, body = yield fetch("POST", url + "v1/payments", {"card": PAN, "amount": 1234, "order": "page-1"})
        self.assertEqual(body["state"], "approved")

        page = Page((yield openInChromium(self, url)))
        endpoint = "127.0.0.1:%d" % (port,)
        self.assertEqual(page.banner.strip(), "link ready")
        for header in ("Endpoint", "State", "Last frame in", "Last frame out", "In flight", "RTT p50", "RTT p99",
                       "Timeouts", "Reconnects", "Violations"):
            self.assertIn(header, page.headers)
        row = page.row(endpoint=endpoint)
        self.assertIsNotNone(row, page.rows)
        self.assertEqual(row["Endpoint"], endpoint)
        self.assertEqual(row["State"], "ready")
        self.assertRegex(row["RTT p50"], r"^[\d.]+ ms$")
        self.assertRegex(row["Last frame in"], r"ago$")
        self.assertEqual(row["Timeouts"], "0")
        self.assertEqual(row["Requests"], "2")  # sign-on and the purchase
        self.assertNotIn(PAN, "".join(page.text))

        page = Page((yield openInChromium(self, paymentUrl)))
        self.assertEqual(page.banner.strip(), "platform ready")
        [only] = page.rows
        row = dict(zip(page.headers, only["cells"]))
        self.assertEqual((row["Platform"], row["State"]), ("PLATFORM", "ready"))
        self.assertEqual(row["Requests in"], "2")

        payment.signal("KILL")
        yield payment.whenEnded(10)
        yield waitUntil(lambda: not service.readyLinks(), 10, "the platform to see the link gone")
        page = Page((yield openInChromium(self, url)))
        self.assertEqual(page.banner.strip(), "no links ready")
        self.assertEqual(page.row(endpoint=endpoint)["State"], "connecting")
