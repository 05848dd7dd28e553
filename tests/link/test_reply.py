"""
L{tvlink.link.protocol.Reply}, the Deferred a request's answer is delivered
through, against a plain L{Deferred}: the same generated callback chains,
fired the same way, must give the same trace of calls, results and errors.
"""

import gc
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import AlreadyCalledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tvlink.link import protocol as link
from tvlink.link.protocol import PendingRequests, Reply

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)

#: What a callback does with what it is given.
STEPS = st.sampled_from(
    [
        "none",  # returns None
        "value",  # returns a new value
        "same",  # returns what it got
        "raise",  # raises
        "failure",  # returns a Failure
        "fired",  # returns a Deferred that already has a value
        "failed",  # returns a Deferred that already failed
        "later",  # returns a Deferred fired after the chain has run
        "add",  # adds another callback to the Deferred it runs on, returns None
        "self",  # returns the Deferred it runs on
    ]
)


class Boom(Exception):
    pass


def chainOf(kind, d, steps, trace, later, position=0):
    """
    Callbacks doing C{steps} on C{d}, recording into C{trace}; Deferreds
    to fire afterwards go into C{later}.
    """

    def step(result, i, what, side):
        trace.append((i, side, what, _shape(result)))
        if what == "none":
            return None
        if what == "value":
            return {"step": i}
        if what == "same":
            return result
        if what == "raise":
            raise Boom(i)
        if what == "failure":
            return Failure(Boom(i))
        if what == "fired":
            return succeed({"fired": i})
        if what == "failed":
            return fail(Boom(i))
        if what == "later":
            waiting = Deferred()
            later.append((i, waiting))
            return waiting
        if what == "add":
            d.addBoth(lambda r: trace.append((i, "added", _shape(r))) or r)
            return None
        if what == "self":
            # Deferred warns and breaks the chain; both must do the same.
            return d
        raise AssertionError(what)

    for n, what in enumerate(steps):
        i = position + n
        d.addCallbacks(step, step, (i, what, "cb"), None, (i, what, "eb"))


def _shape(result):
    if isinstance(result, Failure):
        return ("failure", result.type.__name__, str(result.value))
    if isinstance(result, Deferred):
        return ("deferred",)
    return ("value", repr(result))


class ReplyMatchesDeferredTests(SynchronousTestCase):
    def setUp(self):
        self.assertIs(link._AnswerDeferred, Reply, "the shortcut is not in use with this Twisted")

    def traceOf(self, kind, before, after, answer, pause, fireTwice, waited):
        with warnings.catch_warnings():
            # A callback returning its own Deferred is warned about; both
            # kinds must behave alike all the same.
            warnings.simplefilter("ignore", DeprecationWarning)
            return self._traceOf(kind, before, after, answer, pause, fireTwice, waited)

    def _traceOf(self, kind, before, after, answer, pause, fireTwice, waited):
        trace = []
        later = []
        d = kind()
        chainOf(kind, d, before, trace, later)
        outer = None
        if waited:
            # Another Deferred waits on this one.
            outer = Deferred()
            outer.addCallback(lambda _: d)
            outer.callback(None)
            outer.addBoth(lambda r: trace.append(("outer", _shape(r))))
        if pause:
            d.pause()
        try:
            d.callback(answer)
        except AlreadyCalledError:
            trace.append("already-called")
        if fireTwice:
            try:
                d.callback(answer)
            except AlreadyCalledError:
                trace.append("already-called twice")
        if pause:
            d.unpause()
        chainOf(kind, d, after, trace, later, position=len(before))
        for i, waiting in later:
            waiting.callback({"later": i})
        # The end of the chain, observed and consumed.
        d.addBoth(lambda r: trace.append(("end", _shape(r))))
        self.flushLoggedErrors(Boom)
        return trace

    @PROPERTY
    @given(
        before=st.lists(STEPS, max_size=4),
        after=st.lists(STEPS, max_size=3),
        answer=st.sampled_from([{"resp": "00"}, {}, "not a dict", None]),
        pause=st.booleans(),
        fireTwice=st.booleans(),
        waited=st.booleans(),
    )
    def test_sameTrace(self, before, after, answer, pause, fireTwice, waited):
        """
        Any chain, fired with any answer, paused or not, waited on or not,
        gives a L{Reply} the same trace as a plain L{Deferred}.
        """
        expected = self.traceOf(Deferred, before, after, answer, pause, fireTwice, waited)
        got = self.traceOf(Reply, before, after, answer, pause, fireTwice, waited)
        self.assertEqual(got, expected)

    def test_shortcutTaken(self):
        """
        The common case (one callback pair, a dict answer, the callback
        returning None) goes the short way and leaves the Deferred called
        with a result of None, as a plain one would be.
        """
        calls = []
        d = Reply()
        d.addCallbacks(lambda r, tag: calls.append((r, tag)), lambda f: f, ("x",))
        d.callback({"resp": "00"})
        self.assertEqual(calls, [({"resp": "00"}, "x")])
        self.assertTrue(d.called)
        self.assertIsNone(d.result)
        self.assertEqual(d._callbacks, [])
        seen = []
        d.addCallback(seen.append)
        self.assertEqual(seen, [None])

    def test_raisingCallbackFailsTheChain(self):
        """
        A callback that raises on the short path leaves a failure for the
        next errback, and an unhandled one is reported like a plain
        Deferred's.
        """
        d = Reply()
        d.addCallback(lambda r: 1 / 0)
        d.callback({})
        failures = []
        d.addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0].check(ZeroDivisionError))

        unhandled = Reply()
        unhandled.addCallback(lambda r: 1 / 0)
        unhandled.callback({})
        del unhandled
        gc.collect()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_cancelStillRemovesTheEntry(self):
        """
        The Deferreds L{PendingRequests} hands out are L{Reply}s, and
        cancelling one still takes its request out of the table.
        """
        released = []
        table = PendingRequests(Clock(), release=released.append)
        d = table.add(("S", "000001", "1126000000"), 5.0, stan="000001")
        self.assertIsInstance(d, Reply)
        d.addErrback(lambda f: None)
        d.cancel()
        self.assertEqual(len(table), 0)
        self.assertEqual(released, ["000001"])
