"""
Tests for L{tvlink.masking}: L{maskPan}, the masking log observer, its
installation on a publisher, and real twistd runs whose whole output is
grepped for card numbers.
"""

import io
import re
from types import SimpleNamespace

from twisted.internet import defer
from twisted.logger import (
    Logger,
    LogLevel,
    LogPublisher,
    eventAsText,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.logger import LogBeginner
from twisted.logger._legacy import publishToNewObserver
from twisted.python import log as legacyLog
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.processes import ReactorTestCase, spawnTwistd, withDeadline
from tvlink import PlatformService
from tvlink.masking import (
    MaskedException,
    MaskingObserver,
    hasPan,
    installMasking,
    maskingInstalled,
    maskEvent,
    maskPan,
    uninstallMasking,
)

PAN = "6222020000000000018"
MASKED = "622202*********0018"

#: A card number as the logs must never show it: 16 to 19 digits in a row.
UNMASKED = re.compile(r"(?<![0-9])[0-9]{16,19}(?![0-9])")

#: A line of twistd's log: a timestamp, or a tab before a continuation.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d|\t)")


class MaskPanTests(SynchronousTestCase):
    def test_lengths(self):
        """
        12 to 19 digits keep their first 6 and last 4; shorter and longer
        runs of digits are not card numbers.
        """
        self.assertEqual(maskPan(PAN), MASKED)
        self.assertEqual(maskPan("4111111111111111"), "411111******1111")
        self.assertEqual(maskPan("123456789012"), "123456**9012")
        self.assertEqual(maskPan("12345678901"), "12345678901")
        self.assertEqual(maskPan("12345678901234567890"), "12345678901234567890")

    def test_inText(self):
        self.assertEqual(
            maskPan('{"pan":"%s","stan":"000001","time":"0101120000"}' % (PAN,)),
            '{"pan":"%s","stan":"000001","time":"0101120000"}' % (MASKED,),
        )
        self.assertEqual(
            maskPan("cards %s and 4111111111111111." % (PAN,)),
            "cards %s and 411111******1111." % (MASKED,),
        )
        self.assertEqual(maskPan("x%sy" % (PAN,)), "x%sy" % (MASKED,))

    def test_grouped(self):
        """
        Digits grouped by single spaces or dashes are masked in place.
        """
        self.assertEqual(maskPan("4111 1111 1111 1111"), "4111 11** **** 1111")
        self.assertEqual(maskPan("4111-1111-1111-1111"), "4111-11**-****-1111")

    def test_idempotent(self):
        self.assertEqual(maskPan(maskPan(PAN)), MASKED)
        self.assertFalse(hasPan(MASKED))
        self.assertTrue(hasPan(PAN))

    def test_bytes(self):
        self.assertEqual(maskPan(b"pan=" + PAN.encode()), b"pan=" + MASKED.encode())
        self.assertEqual(maskPan(bytearray(b"12")), b"12")

    def test_other(self):
        self.assertIs(maskPan(None), None)
        self.assertEqual(maskPan(""), "")
        self.assertEqual(maskPan("no card here, stan 000001"), "no card here, stan 000001")


class _Card:
    def __repr__(self):
        return "<Card %s>" % (PAN,)


class ObserverTests(SynchronousTestCase):
    """
    L{MaskingObserver} masks format fields, the text, exceptions and
    failures, for text and JSON observers alike, and leaves the original
    event alone.
    """

    def setUp(self):
        self.events = []
        self.text = io.StringIO()
        self.json = io.StringIO()
        publisher = LogPublisher(
            MaskingObserver(self.events.append),
            MaskingObserver(textFileLogObserver(self.text)),
            MaskingObserver(jsonFileLogObserver(self.json)),
        )
        self.log = Logger(namespace="test", observer=publisher)

    def assertClean(self):
        output = self.text.getvalue() + self.json.getvalue()
        for event in self.events:
            output += eventAsText(event)
        self.assertEqual(UNMASKED.findall(output), [])
        return output

    def test_fields(self):
        message = {"mti": "0200", "pan": PAN, "orig": {"pan": PAN}}
        self.log.info("request {message} card {pan}", message=message, pan=PAN, cards=[PAN, (PAN,)])
        output = self.assertClean()
        self.assertIn(MASKED, output)
        [event] = self.events
        self.assertEqual(event["pan"], MASKED)
        self.assertEqual(event["message"]["orig"]["pan"], MASKED)
        self.assertEqual(event["cards"], [MASKED, (MASKED,)])
        # The caller's objects are not changed.
        self.assertEqual(message["pan"], PAN)

    def test_formatText(self):
        self.log.info("literal " + PAN + " in the format")
        self.log.info("an object {card!r}", card=_Card())
        self.log.info("an int {n}", n=int(PAN))
        output = self.assertClean()
        self.assertEqual(output.count(MASKED) >= 3, True, output)

    def test_failure(self):
        """
        A failure whose exception message and traceback source line both
        carry a card number is logged masked; its type is kept.
        """
        try:
            raise ValueError("card " + PAN + " declined")  # 6222020000000000018
        except ValueError:
            failure = Failure()
        self.log.failure("handler failed on {pan}", failure, pan=PAN)
        output = self.assertClean()
        self.assertIn("builtins.ValueError: card %s declined" % (MASKED,), output)
        [event] = self.events
        masked = event["log_failure"]
        self.assertTrue(masked.check(ValueError))
        self.assertIsInstance(masked.value, ValueError)
        self.assertEqual(masked.getErrorMessage(), "card %s declined" % (MASKED,))
        self.assertNotIn(PAN, masked.getTraceback())
        self.assertNotIn(PAN, masked.getBriefTraceback())
        self.assertNotIn(PAN, repr(masked))
        # The original failure is untouched.
        self.assertIn(PAN, failure.getErrorMessage())

    def test_failureCapturedVariables(self):
        """
        A failure that captured its frames' variables, one of them a card
        number, leaves no card number in text or JSON lines.
        """

        def decline(pan):
            raise ValueError("declined")

        try:
            decline(PAN)
        except ValueError:
            failure = Failure(captureVars=True)
        self.assertIn(PAN, failure.getTraceback(detail="verbose"))
        self.log.failure("handler failed", failure)
        self.assertClean()
        [event] = self.events
        self.assertNotIn(PAN, event["log_failure"].getTraceback(detail="verbose"))

    def test_oddException(self):
        """
        An exception that cannot be rebuilt with masked arguments is
        replaced by a L{MaskedException} with the masked text.
        """

        class Odd(Exception):
            def __init__(self, pan):
                Exception.__init__(self)
                self.pan = pan

            def __str__(self):
                return "odd " + self.pan

            __slots__ = ()

        self.log.error("error {e}", e=Odd(PAN))
        self.assertClean()
        [event] = self.events
        self.assertNotIn(PAN, str(event["e"]))

    def test_legacy(self):
        """
        Legacy C{twisted.python.log} messages and errors, as the legacy
        publisher hands them to the new one, are masked too.
        """
        observer = MaskingObserver(self.events.append)
        for eventDict in (
            {"message": ("legacy card %s" % (PAN,),), "isError": 0, "system": "-", "time": 0.0},
            {"message": (), "format": "card %(pan)s", "pan": PAN, "isError": 0, "system": "-", "time": 0.0},
        ):
            publishToNewObserver(observer, eventDict, legacyLog.textFromEventDict)
        try:
            raise KeyError(PAN)
        except KeyError:
            failure = Failure()
        publishToNewObserver(
            observer,
            {"message": (), "failure": failure, "isError": 1, "why": "error for " + PAN, "system": "-", "time": 0.0},
            legacyLog.textFromEventDict,
        )
        output = "".join(eventAsText(e) for e in self.events)
        self.assertEqual(UNMASKED.findall(output), [])
        self.assertGreaterEqual(output.count(MASKED), 3, output)

    def test_brokenEvent(self):
        """
        An event the mask cannot handle is replaced, never passed on as it
        is.
        """
        from tvlink import masking

        def boom(value, _depth=0):
            raise RuntimeError("boom " + PAN)

        self.patch(masking, "maskValue", boom)
        MaskingObserver(self.events.append)(
            {"log_format": "card " + PAN, "log_level": LogLevel.info, "log_time": 0.0}
        )
        [passed] = self.events
        text = eventAsText(passed)
        self.assertNotIn(PAN, text)
        self.assertIn("masking failed", text)
        self.assertIs(passed["log_level"], LogLevel.info)

    def test_maskEventCopy(self):
        event = {"log_format": "{pan}", "pan": PAN}
        masked = maskEvent(event)
        self.assertEqual(event["pan"], PAN)
        self.assertEqual(masked["pan"], MASKED)

    def test_maskedException(self):
        self.assertEqual(str(MaskedException(MASKED)), MASKED)


class InstallTests(SynchronousTestCase):
    """
    L{installMasking} puts a filter on a publisher that masks every event
    in place for the observers added after it (as twistd adds its own when
    it begins logging, replaying what came before).
    """

    def test_publisher(self):
        publisher = LogPublisher()
        before, after = [], []
        publisher.addObserver(before.append)
        self.assertFalse(maskingInstalled(publisher))
        masking = installMasking(publisher)
        self.assertIs(installMasking(publisher), masking)
        self.assertTrue(maskingInstalled(publisher))
        publisher.addObserver(after.append)
        log = Logger(observer=publisher)
        log.info("card {pan}", pan=PAN)
        self.assertEqual([e["pan"] for e in after], [MASKED])
        # An observer that only keeps the event (as the startup buffer
        # does) holds it masked once the filter has run.
        self.assertEqual([e["pan"] for e in before], [MASKED])
        publisher.removeObserver(after.append)
        uninstallMasking(publisher)
        self.assertFalse(maskingInstalled(publisher))
        log.info("card {pan}", pan=PAN)
        self.assertEqual([e["pan"] for e in before], [MASKED, PAN])
        self.assertEqual(len(after), 1)

    def test_writtenBeforeIsNot(self):
        """
        An observer added before the filter and writing at once writes
        what it was given: the documented reason to install it before
        logging begins, or to wrap such an observer in
        L{MaskingObserver}.
        """
        publisher = LogPublisher()
        early, wrapped = io.StringIO(), io.StringIO()
        publisher.addObserver(textFileLogObserver(early))
        publisher.addObserver(MaskingObserver(textFileLogObserver(wrapped)))
        installMasking(publisher)
        Logger(observer=publisher).info("card {pan}", pan=PAN)
        self.assertIn(PAN, early.getvalue())
        self.assertIn(MASKED, wrapped.getvalue())
        self.assertEqual(UNMASKED.findall(wrapped.getvalue()), [])

    def test_failingMask(self):
        """
        An event that cannot be masked reaches the later observers as a
        placeholder that says so, never as it was.
        """

        class Unmaskable(dict):
            def items(self):
                raise RuntimeError("no items for " + PAN)

        publisher = LogPublisher()
        installMasking(publisher)
        seen = []
        publisher.addObserver(seen.append)
        event = Unmaskable(log_format="card " + PAN, log_level=None)
        publisher(event)
        self.assertEqual(len(seen), 1)
        text = seen[0]["text"]
        self.assertIn("masking failed", text)
        self.assertEqual(UNMASKED.findall(text), [])

    def test_beginner(self):
        """
        Events buffered before logging begins, and everything after, reach
        the observers given to C{beginLoggingTo} masked.
        """
        publisher = LogPublisher()
        beginner = LogBeginner(
            publisher,
            io.StringIO(),
            SimpleNamespace(stdout=io.StringIO(), stderr=io.StringIO()),
            SimpleNamespace(showwarning=None),
        )
        installMasking(publisher)
        log = Logger(observer=publisher)
        log.info("early {pan}", pan=PAN)
        output = io.StringIO()
        beginner.beginLoggingTo([textFileLogObserver(output)], redirectStandardIO=False)
        log.info("late {pan}", pan=PAN)
        text = output.getvalue()
        self.assertEqual(UNMASKED.findall(text), [])
        self.assertEqual(text.count(MASKED), 2, text)

    def test_global(self):
        """
        C{makeService} installs it on the global publisher.
        """
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import globalLogPublisher

        from tvlink.cli.tap import Options, makeService

        config = Options()
        config.parseOptions(["payment", "--listen", "tcp:0"])
        makeService(config, reactor=MemoryReactorClock())
        self.assertTrue(maskingInstalled(globalLogPublisher))
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        Logger(namespace="test").info("card {pan}", pan=PAN)
        self.assertEqual([e["pan"] for e in seen], [MASKED])


class TwistdRunTests(ReactorTestCase):
    """
    Real C{twistd tvlink ...} runs with no logging option: their whole
    output holds no unmasked card number after purchases that carry one
    (and after a card number got into a log line and a traceback).
    """

    timeout = 15

    def assertMasked(self, child):
        """
        No unmasked card number in the child's log: its log lines (they
        begin with a timestamp) and their continuation lines (a tab:
        tracebacks, multi-line messages). At least one card number did
        reach the log, masked.
        """
        logLines = [line for line in child.lines if LOG_LINE.match(line)]
        self.assertGreater(len(logLines), 5)
        log = "\n".join(logLines)
        self.assertEqual(UNMASKED.findall(log), [], log)
        self.assertIn(MASKED, log)
        return log

    @defer.inlineCallbacks
    def test_sandbox(self):
        """
        The sandbox purchases with a demo card; the platform's id is a
        card number too, so the payment side logs it at sign-on. (The
        sandbox also prints a curl command with the demo card straight to
        standard output, on purpose and outside the log: not checked.)
        """
        child = spawnTwistd(
            self,
            "sandbox",
            "--sender", PAN,
            "--heartbeat", "1",
            "--http", "tcp:0:interface=127.0.0.1",
            name="sandbox",
        )
        yield child.waitFor(r"demo purchase .* answered 00", 10)
        yield child.stop()
        self.assertMasked(child)

    @defer.inlineCallbacks
    def test_payment(self):
        """
        A payment child serves an in-test platform whose id is a card
        number: a purchase, a balance inquiry, and a reversal that makes
        the handler fail with the card number in the logged key.
        """
        child = spawnTwistd(
            self, "payment", "--listen", "tcp:0:interface=127.0.0.1", "--heartbeat", "1",
            "--ledger", "memory", name="payment",
        )
        match = yield child.waitFor(r"payment listening on 127\.0\.0\.1:(\d+)", 10)
        platform = PlatformService(
            ["127.0.0.1:%s" % (match.group(1),)], sender=PAN, timeout=3, connect_timeout=3
        )
        platform.startService()
        self.addCleanup(platform.stopService)
        yield withDeadline(platform.whenReady(), 10, "the platform to sign on")
        answer = yield withDeadline(
            platform.request(
                {"mti": "0200", "proc": "000000", "pan": PAN, "amount": "%012d" % 1234, "currency": "156"}
            ),
            5,
            "the purchase",
        )
        self.assertEqual(answer["resp"], "00")
        balance = yield withDeadline(
            platform.request({"mti": "0200", "proc": "300000", "pan": PAN, "currency": "156"}),
            5,
            "the balance inquiry",
        )
        self.assertEqual(balance["resp"], "00")
        # A reversal whose original cannot be a key: the handler fails and
        # the payment side logs the request key (time = a card number)
        # with a traceback.
        reversal = yield withDeadline(
            platform.request(
                {"mti": "0420", "time": PAN, "orig": {"mti": "0200", "sender": [PAN], "stan": "1", "time": PAN}}
            ),
            5,
            "the reversal",
        )
        self.assertIn(reversal["resp"], ("00", "12", "25", "30", "96"))
        yield platform.stopService()
        yield child.stop()
        output = self.assertMasked(child)
        self.assertIn("platform %s signed on" % (MASKED,), output)
