"""
Money-moving requests through the platform's journal (see
L{tvlink.platform.journal}): each purchase or refund is recorded before it
is sent and settled once its outcome is known. One that was sent and got
no answer, or an answer that does not say whether money moved, is in
doubt: it is marked so and reversed until the payment side acknowledges
the reversal.
"""

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from tvlink.errors import (
    DuplicateKey,
    InDoubt,
    InDoubtAnswer,
    InDoubtLinkLost,
    InDoubtTimeout,
    JournalUnavailable,
    LinkLost,
    NoLinkAvailable,
    OrderDecided,
    RequestTimeout,
)
from tvlink.link import wire
from tvlink.platform.journal import APPROVED, DECLINED, INTEGRITY_ERRORS, PENDING, REVERSAL_DONE
from tvlink.platform.reversals import Reversals

#: Answers to a purchase or refund that do not say whether money moved.
UNCERTAIN_ANSWERS = frozenset((wire.DESTINATION_UNAVAILABLE, wire.SYSTEM_MALFUNCTION))


class _Unsent(Exception):
    """
    Carries an error raised before a request was sent past the
    in-doubt handling.
    """

    def __init__(self, error):
        self.error = error



class Settlement:
    """
    The money-moving half of a L{tvlink.platform.service.PlatformService}:
    journals each purchase and refund around its sending, and drives the
    L{Reversals} of those left in doubt, also after a restart.

    @param journal: the L{tvlink.platform.journal.PlatformJournal}.
    @param settings: the links' L{tvlink.link.settings.LinkSettings}: the
        STANs, sender and transmission time reversals are keyed with.
    @param dispatch: C{dispatch(message, timeout, stan=None, flight=None)
        -> Deferred} of the answer: the platform service's own dispatch
        (balanced, queued while no link is ready). C{stan}, if given, is
        released when the request ends; C{flight}, if given, is a
        one-item list set to C{True} once the request is written.
    @param reactor: the clock.

    @ivar reversals: the L{Reversals} under way.
    """

    log = Logger(namespace="tvlink.platform")

    def __init__(self, journal, settings, dispatch, reactor):
        self.journal = journal
        self.settings = settings
        self.dispatch = dispatch
        self.reactor = reactor
        self.reversals = Reversals(
            journal,
            dispatch,
            reactor,
            settings.timeout,
            onFinal=self._reversed,
            newKey=self._rekeyReversal,
        )

    def start(self):
        """
        Start reversing, beginning with what the journal holds unfinished
        of this process (and of any whose lease ran out); then, every
        third of the lease, renew this process's lease and take over the
        entries of processes whose lease ran out (a journal several
        processes share).
        """
        self.reversals.running = True
        self.journal.claim(mine=True).addCallback(self._resume).addErrback(self._claimFailed)
        self._leases = LoopingCall(self._takeOver)
        self._leases.clock = self.reactor
        self._leases.start(self.journal.lease / 3.0, now=False)

    def stop(self):
        """
        Stop reversing; unfinished reversals stay in the journal, and this
        process's lease is given up so that another may take them at once.
        """
        self.reversals.stop()
        leases = getattr(self, "_leases", None)
        if leases is not None and leases.running:
            leases.stop()
            self.journal.releaseLease().addErrback(self._claimFailed)

    def _takeOver(self):
        d = self.journal.claim(mine=False)
        d.addCallback(self._tookOver)
        d.addErrback(self._claimFailed)

    def _tookOver(self, entries):
        for entry in entries:
            self.log.warn(
                "took over {key} from {owner}, whose lease ran out",
                link_event="journal-takeover",
                key="/".join(entry["key"]),
                owner=entry.get("taken_from") or "no owner",
            )
        self._resume(entries)

    def _claimFailed(self, failure):
        self.log.error(
            "journal lease or takeover failed: {why}", link_event="journal-lease-failed", why=failure.getErrorMessage()
        )

    def _resume(self, entries):
        """
        After a restart: whatever was journalled but not settled is in
        doubt (it may have been sent); reverse it.
        """
        for entry in entries:
            if entry["sender"] == self.settings.sender and entry["reversal_stan"]:
                self.settings.stans.reserve(entry["reversal_stan"])
            if entry["state"] == PENDING or not entry["reversal_stan"]:
                self._markInDoubt(entry["key"], "unfinished at restart")
            else:
                self.reversals.begin(entry)
        if entries:
            self.log.info(
                "resuming {count} unfinished transactions from the journal",
                link_event="journal-resume",
                count=len(entries),
            )

    def _releaseStan(self, stan):
        if stan is not None:
            self.settings.stans.release(stan)

    def request(self, message, key, timeout, stan, budget, terminal=None, newOrder=False):
        """
        Journal the money-moving request C{message} (whose key is C{key})
        as made for C{terminal} (with C{newOrder}, only if no purchase sent
        decides its order already: see L{PlatformJournal.record}),
        send it unless less than C{budget} seconds of its C{timeout} are
        left once it is journalled, and settle its outcome. C{stan}, if
        given, is released when the request ends.

        @return: a L{Deferred} firing with the answer, or failing with the
            error that ended the request; for one whose outcome is unknown,
            with L{tvlink.errors.InDoubt}.
        """
        started = self.reactor.seconds()
        flight = [False]
        d = self.journal.record(message, terminal, newOrder)
        d.addCallbacks(
            self._recorded,
            self._notRecorded,
            callbackArgs=(message, timeout, started, stan, flight, budget),
            errbackArgs=(key, stan),
        )
        d.addCallbacks(self._settled, self._unsettled, callbackArgs=(key,), errbackArgs=(key, flight))
        return d

    def _recorded(self, _, message, timeout, started, stan, flight, budget):
        left = timeout - (self.reactor.seconds() - started)
        if left < budget:
            # The journal write took the budget: sending now could only
            # time out and cost a reversal.
            self._releaseStan(stan)
            raise NoLinkAvailable("no time left to send after journalling")
        return self.dispatch(message, left, stan, flight)

    def _notRecorded(self, failure, key, stan):
        self._releaseStan(stan)
        if failure.check(*INTEGRITY_ERRORS):
            raise _Unsent(DuplicateKey("transaction %s is already journalled" % ("/".join(key),)))
        if failure.check(OrderDecided):
            # Decided already (OrderTaken too: by another process at the
            # same moment).
            raise _Unsent(failure.value)
        if failure.check(ConnectionError):
            raise _Unsent(JournalUnavailable("transaction %s was not sent: %s" % ("/".join(key), failure.value)))
        return failure

    def _settled(self, answer, key):
        resp = answer.get("resp")
        if resp in UNCERTAIN_ANSWERS:
            # 91 or 96: the payment node could not finish, but its account
            # back end may have applied the request all the same (a
            # back-end timeout). Reversing what was never applied is
            # harmless; leaving applied money unreversed is not.
            error = InDoubtAnswer(
                "transaction %s was answered %s by the payment node; its outcome at the "
                "account back end is unknown, so it is in doubt and is being reversed"
                % ("/".join(key), resp)
            )
            error.key = key
            error.answer = answer
            d = self._markInDoubt(key, "answered %s" % (resp,))
            return d.addCallback(lambda _: Failure(error))
        state = APPROVED if resp == wire.APPROVED else DECLINED
        d = self.journal.settle(key, state, resp)
        return d.addCallback(lambda _: answer)

    def _unsettled(self, failure, key, flight):
        if failure.check(_Unsent):
            return Failure(failure.value.error)
        if not flight[0]:
            # Never written to a link: nothing can have moved.
            d = self.journal.settle(key, DECLINED, wire.DESTINATION_UNAVAILABLE, failure.getErrorMessage())
            return d.addCallback(lambda _: failure)
        # Written, and no answer: timed out, link lost, or cancelled by the
        # caller. The payment side may have applied it.
        if failure.check(RequestTimeout):
            error = InDoubtTimeout(key, failure.value.timeout)
        elif failure.check(LinkLost):
            error = InDoubtLinkLost(key, failure.getErrorMessage())
        else:
            error = InDoubt(
                "request %s ended without an answer (%s) after it was sent; the transaction "
                "is in doubt and is being reversed" % ("/".join(key), failure.getErrorMessage() or failure.type.__name__)
            )
            error.key = key
        d = self._markInDoubt(key, failure.getErrorMessage())
        return d.addCallback(lambda _: Failure(error))

    def _markInDoubt(self, key, reason):
        stan = self.settings.stans.allocate()
        when = self.settings.transmissionTime()
        self.log.warn(
            "transaction {key} is in doubt ({reason}); reversing",
            link_event="in-doubt",
            key="/".join(key),
            reason=reason,
        )
        d = self.journal.markInDoubt(key, reason, stan, when)
        d.addCallback(lambda _: self.journal.get(key))
        d.addCallback(self._beginReversal, stan)
        return d

    def _beginReversal(self, entry, allocated):
        if entry["reversal_stan"] != allocated:
            # Already in doubt before (a restart): keep its first reversal key.
            self.settings.stans.release(allocated)
        self.reversals.begin(entry)

    def _rekeyReversal(self, key, message):
        if message["sender"] == self.settings.sender:
            self.settings.stans.release(message["stan"])
        message = dict(message, stan=self.settings.stans.allocate(), time=self.settings.transmissionTime())
        self.journal.rekeyReversal(key, message["stan"], message["time"])
        return message

    def _reversed(self, key, state, message):
        if message["sender"] == self.settings.sender:
            self.settings.stans.release(message["stan"])

    def lateResponse(self, key, message):
        """
        Journal an answer to C{key} that came after its timeout; a late
        acknowledgement of a reversal finishes it.
        """
        resp = message.get("resp")
        if message.get("mti") == "0430":
            d = self.journal.byReversalKey(key)
            d.addCallback(self._lateReversalAnswer, resp)
        else:
            d = self.journal.noteLate(key, resp)
        d.addErrback(lambda f: self.log.failure("recording a late answer failed", f))

    def _lateReversalAnswer(self, entry, resp):
        if entry is not None and entry["state"] not in (APPROVED, DECLINED) and resp in REVERSAL_DONE:
            return self.reversals.finished(entry["key"], resp)
