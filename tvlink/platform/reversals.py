"""
L{Reversals}: the C{0420} reversals the platform's journal
(L{tvlink.platform.journal}) drives for its in-doubt entries, sent until
the payment side acknowledges each one.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tvlink.link import wire
from tvlink.platform.journal import REVERSAL_DONE, REVERSED


class Reversals:
    """
    Sends the C{0420} reversal of every in-doubt entry until the payment
    side acknowledges it (store and forward): at once, then with
    exponential backoff (C{initialDelay} doubling up to C{maxDelay}),
    whatever the links do, and again after a restart.

    @param send: C{send(message, timeout) -> Deferred} of the answer; the
        platform service's own dispatch (balanced, queued while no link is
        ready).
    @param newKey: C{newKey(key, message) -> message}: the reversal
        C{message} of C{key} under a fresh key of its own, for when the
        payment side answers C{94} (its key collides with another
        transaction).
    """

    log = Logger(namespace="tvlink.journal")
    initialDelay = 1.0
    maxDelay = 60.0

    def __init__(self, journal, send, clock, timeout, onFinal=None, newKey=None):
        self.newKey = newKey
        self.journal = journal
        self.send = send
        self.clock = clock
        self.timeout = timeout
        self.onFinal = onFinal
        self.active = {}
        self.running = False

    def start(self, entries):
        self.running = True
        for entry in entries:
            self.begin(entry)

    def stop(self):
        self.running = False
        active, self.active = self.active, {}
        for state in active.values():
            call = state.get("call")
            if call is not None and call.active():
                call.cancel()

    def outstanding(self):
        return len(self.active)

    def begin(self, entry):
        """
        Start reversing C{entry} (a journal entry C{dict} in doubt).
        """
        key = entry["key"]
        if key in self.active or not self.running:
            return
        message = {
            "mti": "0420",
            "sender": entry["sender"],
            "stan": entry["reversal_stan"],
            "time": entry["reversal_time"],
            "orig": {"mti": entry["mti"], "sender": key[0], "stan": key[1], "time": key[2]},
        }
        for field in ("proc", "amount", "currency"):
            if entry.get(field) is not None:
                message[field] = entry[field]
        if entry.get("order_id") is not None:
            message["order"] = entry["order_id"]
        pan = self.journal.openedCard(entry, "reversal")
        if pan is not None:
            # Field 2 of the original, for an ISO 8583 0420.
            message["pan"] = pan
        self.active[key] = {"message": message, "delay": self.initialDelay, "call": None}
        self._attempt(key)

    def _attempt(self, key):
        state = self.active.get(key)
        if state is None or not self.running:
            return
        state["call"] = None
        self.journal.noteAttempt(key)
        Deferred.fromCoroutine(self._send(key, dict(state["message"])))

    async def _send(self, key, message):
        """
        Send the reversal C{message} of C{key} once; finish it if it is
        acknowledged, or repeat it later.
        """
        try:
            answer = await self.send(message, self.timeout)
        except Exception:
            self.log.info(
                "reversal of {key} not acknowledged yet: {why}",
                link_event="reversal-retry",
                key="/".join(key),
                why=Failure().getErrorMessage(),
            )
            self._retry(key)
            return
        resp = answer.get("resp")
        if resp in REVERSAL_DONE:
            self.finished(key, resp)
            return
        if resp == wire.DUPLICATE and self.newKey is not None:
            # Our reversal's key collides with another transaction the
            # payment side knows: repeat under a fresh key.
            state = self.active.get(key)
            if state is not None:
                state["message"] = self.newKey(key, state["message"])
        self.log.error(
            "reversal of {key} answered {resp}; will repeat until acknowledged",
            link_event="reversal-refused",
            key="/".join(key),
            resp=resp,
        )
        self._retry(key)

    def _retry(self, key):
        state = self.active.get(key)
        if state is None or not self.running:
            return
        delay = state["delay"]
        state["delay"] = min(self.maxDelay, delay * 2)
        state["call"] = self.clock.callLater(delay, self._attempt, key)

    def finished(self, key, resp):
        """
        The reversal of C{key} was acknowledged (perhaps late).
        """
        state = self.active.pop(key, None)
        if state is not None and state.get("call") is not None and state["call"].active():
            state["call"].cancel()
        d = self.journal.markReversed(key, resp)
        self.log.info(
            "transaction {key} reversed (final)", link_event="reversed", key="/".join(key)
        )
        if self.onFinal is not None and state is not None:
            self.onFinal(key, REVERSED, state["message"])
        return d
