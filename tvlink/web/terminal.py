"""
The terminal API: what a TV terminal calls on the platform, JSON over
HTTP.

    - C{POST /v1/payments} C{{card, amount, currency, order}}: a C{0200}
      purchase. Idempotent by C{order}: a repeat gets the first outcome and
      never charges twice, also while the first is still in flight (it
      waits for it) and after a restart (the journal is read by order).
    - C{GET /v1/payments/ORDER}: the recorded outcome, with its refunds.
    - C{POST /v1/payments/ORDER/refund} C{{amount, card}}: a C{0220}
      refund against the order's approved purchase.
    - C{POST /v1/balance} C{{card}}: a C{0200}/C{300000} balance inquiry.

Amounts are whole fen, as a JSON integer or a string of digits. Answers
carry the state (C{approved}, C{declined}, C{in-doubt}, C{reversed},
C{pending}), the response code and a sentence for a person; card numbers
only ever appear masked. HTTP status: C{200} for every outcome the payment
side decided (a decline too: look at C{state}), C{400} for bad input
(naming the field), C{404} unknown order, C{409} an order id reused with
other details, C{503} no payment link (nothing was sent), C{504} no answer
in time (a purchase or refund is then in doubt and being reversed).
"""

import collections

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from tvlink.errors import InDoubt, LinkLost, NoLinkAvailable, OrderDecided, RequestError, RequestTimeout
from tvlink.link import wire
from tvlink.platform.journal import APPROVED, DECLINED, IN_DOUBT, PENDING, maskedPan, purchasesIn, refundsIn, standing
from tvlink.web.access import Access
from tvlink.web.orders import asFen, entryReply, reference, stateMessage
from tvlink.web.validation import APIError, Reply, invalid

#: Terminal API calls in progress at once, by default.
DEFAULT_MAX_CALLS = 500


class _Flight:
    """
    A call in progress for one order; later calls for the same order wait
    for its reply.
    """

    def __init__(self, **details):
        self.details = details
        self.waiters = []

    def wait(self):
        d = Deferred()
        self.waiters.append(d)
        return d

    def land(self, result):
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if isinstance(result, Reply):
                d.callback(result)
            elif hasattr(result, "value") and isinstance(result.value, APIError):
                d.errback(result.value)
            else:
                d.errback(APIError(500, "error", "the first call for this order failed"))


class TerminalAPI:
    """
    The terminal API's logic, over a L{tvlink.platform.service.PlatformService}
    that keeps a journal. Each call returns a L{Deferred} firing with a
    L{Reply}, or failing with L{APIError}.

    @param service: the platform service, or a callable returning it (or
        C{None} while it is not there yet).
    @param link_wait: seconds a call may wait for a ready link when there
        is none, before it is answered C{503}; by default a quarter of the
        gap between the platform timeout and the terminal deadline, at most
        5 s.
    @param cards: card numbers of this process's approved purchases kept in
        memory (never on disk: the journal holds them masked) so a refund
        need not repeat the card; the oldest are forgotten first.
    @param max_calls: calls in progress at once; beyond it a call is
        answered C{503} with C{Retry-After} at once, before anything is
        journalled or sent (backpressure: latency stays bounded when the
        link or the stores are saturated).
    @param access: the L{tvlink.web.access.Access} that says which
        terminal a request is from (by default an open API). Order ids are
        per terminal: each call takes the C{terminal} it acts for, and
        sees only that terminal's orders.

    @ivar results: C{{(type, result): count}}, for metrics.
    """

    log = Logger(namespace="tvlink.web")

    def __init__(self, service, clock=None, link_wait=None, cards=10000, access=None, max_calls=DEFAULT_MAX_CALLS):
        self._service = service if callable(service) else (lambda: service)
        self.access = access if access is not None else Access()
        self._clock = clock
        self.link_wait = link_wait
        self.cards = collections.OrderedDict()
        self.cardLimit = int(cards)
        self.purchases = {}
        self.refunds = {}
        self.results = {}
        self.active = 0
        self.max_calls = int(max_calls)
        if self.max_calls < 1:
            raise ValueError("max_calls must be at least 1, not %r" % (max_calls,))
        self.stopping = False
        self._idleWaiters = []

    # -- plumbing ------------------------------------------------------

    @property
    def clock(self):
        if self._clock is not None:
            return self._clock
        service = self._service()
        if service is None:
            from tvlink.link.settings import globalReactor

            return globalReactor()
        return service.reactor

    def currentService(self):
        """
        The platform service as it is now, or C{None} while there is none
        (without the checks of L{service}).
        """
        return self._service()

    def service(self):
        """
        The platform service, ready for calls.

        @raise APIError: 503 when there is none, or it is stopping.
        """
        service = self._service()
        if service is None or not service.running:
            raise APIError(503, "unavailable", "the platform is not running yet; try again shortly")
        if self.stopping or service.stopping:
            raise APIError(503, "unavailable", "the platform is stopping; nothing was sent")
        if service.journal is None:
            raise APIError(
                503, "unavailable", "the platform keeps no journal, which the terminal API needs; nothing was sent"
            )
        return service

    def linkWait(self, service):
        if self.link_wait is not None:
            return max(0.0, float(self.link_wait))
        return min(5.0, (service.terminal_deadline - service.settings.timeout) / 4.0)

    def answerBy(self, service):
        """
        Seconds after which a call is answered whatever happens: halfway
        between the longest a request may take (link wait plus the
        platform timeout) and the terminal's deadline.
        """
        busy = self.linkWait(service) + service.settings.timeout
        return busy + max(0.0, service.terminal_deadline - busy) / 2.0

    def count(self, kind, result):
        key = (kind, result)
        self.results[key] = self.results.get(key, 0) + 1

    def begin(self):
        """
        A call begins.

        @raise APIError: C{503} when L{max_calls} are in progress already.
        """
        if self.active >= self.max_calls:
            raise APIError(
                503,
                "busy",
                "the platform has %d calls in progress, its limit; nothing was sent, try again in a second"
                % (self.active,),
                result="busy",
                retry_after=1,
            )
        self.active += 1

    def end(self):
        self.active -= 1
        if self.active <= 0 and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def whenIdle(self):
        """
        A L{Deferred} that fires once no call is in progress.
        """
        if self.active <= 0:
            return succeed(None)
        d = Deferred(lambda d: self._idleWaiters.remove(d))
        self._idleWaiters.append(d)
        return d

    async def _whenLinkReady(self, service):
        """
        Return once a payment link is ready, waiting for one up to
        L{linkWait}.

        @raise NoLinkAvailable: if none is ready in time.
        """
        if service.candidates():
            return
        wait = self.linkWait(service)
        if wait <= 0:
            raise NoLinkAvailable("no payment link is ready")
        ready = service.whenReady()
        call = self.clock.callLater(wait, ready.cancel)
        try:
            await ready
        except CancelledError:
            raise NoLinkAvailable("no payment link became ready within %gs" % (wait,)) from None
        finally:
            if call.active():
                call.cancel()

    async def _send(self, service, message, terminal=None, newOrder=False):
        """
        The answer to request C{message}, sent for C{terminal} once a link
        is ready (with C{newOrder}: see L{PlatformService.request}).
        """
        await self._whenLinkReady(service)
        return await service.request(message, terminal=terminal, newOrder=newOrder)

    def _remember(self, key, card):
        cards = self.cards
        cards[key] = card
        cards.move_to_end(key)
        while len(cards) > self.cardLimit:
            cards.popitem(last=False)

    def _fly(self, flights, key, details, call):
        """
        Run C{call} (a coroutine) as the call in flight for C{key} (a
        terminal and an order): until it lands, later calls for the order
        find it in C{flights} and wait for its reply.
        """
        flight = flights[key] = _Flight(**details)

        def landed(result):
            if flights.get(key) is flight:
                del flights[key]
            flight.land(result)
            return result

        return Deferred.fromCoroutine(call).addBoth(landed)

    async def _repeat(self, flight, details, conflict):
        """
        The reply of the call in C{flight}, marked repeated; or, if this
        call's C{details} are not the same, C{conflict} raised.
        """
        reply = await flight.wait()
        if details != flight.details:
            raise conflict
        return reply.repeated()

    def _unanswered(self, failure, body, kind):
        """
        The reply to a request that got no answer (C{failure} ended it):
        a money-moving one is in doubt, or was never sent.

        @raise APIError: when it was never sent, or failed otherwise.
        """
        if failure.check(APIError):
            failure.raiseException()
        if failure.check(InDoubt):
            body.update(
                state=IN_DOUBT,
                resp=None,
                message=stateMessage(IN_DOUBT, None, kind),
                reference=reference(failure.value.key),
            )
            return Reply(504, body, IN_DOUBT)
        if failure.check(NoLinkAvailable):
            raise APIError(
                503,
                "unavailable",
                "no payment link is available (%s); nothing was sent, try again" % (failure.getErrorMessage(),),
                result="unavailable",
                extra={k: body[k] for k in ("order",) if k in body},
            )
        if failure.check(RequestError):
            raise APIError(503, "unavailable", "the request was not sent: %s" % (failure.getErrorMessage(),))
        self.log.failure("terminal API {kind} failed", failure, kind=kind)
        raise APIError(500, "error", "the platform failed to handle this %s; see its log" % (kind,))

    # -- purchase --------------------------------------------------------

    def purchase(self, order, card, amount, currency="156", terminal=None):
        """
        Make (or repeat) the purchase C{order} of C{terminal}.
        """
        service = self.service()
        details = dict(card=card, amount=amount, currency=currency)
        flight = self.purchases.get((terminal, order))
        if flight is not None:
            return Deferred.fromCoroutine(self._repeat(flight, details, self._conflict(order)))
        return self._fly(
            self.purchases, (terminal, order), details, self._purchase(service, order, card, amount, currency, terminal)
        )

    def _conflict(self, order):
        return APIError(
            409,
            "conflict",
            "order %s was already used for a payment with another card, amount or currency; "
            "use a new order id" % (order,),
            field="order",
        )

    async def _purchase(self, service, order, card, amount, currency, terminal):
        started = self.clock.seconds()
        if not service.candidates():
            # No link to send on: a decided order is answered from the
            # journal now, not after the link wait.
            entries = await service.journal.byOrder(order, terminal)
            if standing(purchasesIn(entries)) is not None:
                return await self._decided(service, started, entries, order, card, amount, currency, terminal)
        message = {
            "mti": "0200",
            "proc": "000000",
            "pan": card,
            "amount": "%012d" % (amount,),
            "currency": currency,
            "order": order,
        }
        try:
            # The journal checks, as it records the purchase, that no
            # purchase sent decides the order already.
            answer = await self._send(service, message, terminal, newOrder=True)
        except OrderDecided as e:
            return await self._decided(service, started, e.entries, order, card, amount, currency, terminal)
        except Exception:
            body = {"order": order, "type": "purchase", "amount": amount, "currency": currency, "card": maskedPan(card)}
            return self._unanswered(Failure(), body, "purchase")
        resp = answer.get("resp")
        state = APPROVED if resp == wire.APPROVED else DECLINED
        if state == APPROVED:
            self._remember((terminal, order), card)
        body = {
            "order": order,
            "type": "purchase",
            "state": state,
            "resp": resp,
            "message": stateMessage(state, resp, "purchase"),
            "amount": amount,
            "currency": currency,
            "card": maskedPan(card),
            "reference": reference(wire.messageKey(answer)),
        }
        return Reply(200, body, state)

    #: Seconds between looks at the journal while another platform process
    #: decides an order.
    decidedPoll = 0.1

    async def _decided(self, service, started, entries, order, card, amount, currency, terminal):
        """
        The answer to a purchase of an order decided already (perhaps
        before a restart): its outcome again, or a conflict if this one
        has other details.

        On a journal several platform processes share, the purchase that
        decides it may still be in flight from another process (pending),
        or not yet readable (L{OrderTaken}: C{entries} empty): the journal
        is read again until it has an outcome, until the call (which
        began at C{started}) is answered anyway (L{answerBy}: a C{504
        pending}), or until the platform stops. A purchase whose details
        differ is a conflict as soon as the one that decides the order is
        read, whatever its state.
        """
        details = ("%012d" % (amount,), currency, maskedPan(card))
        giveUp = started + self.answerBy(service) - self.decidedPoll
        while True:
            first = standing(purchasesIn(entries))
            if first is not None:
                if (first["amount"], first["currency"], first["pan"]) != details:
                    raise self._conflict(order)
                if first["state"] != PENDING:
                    break
            if self.clock.seconds() >= giveUp or self.stopping or service.stopping:
                break
            await deferLater(self.clock, self.decidedPoll, lambda: None)
            entries = await service.journal.byOrder(order, terminal)
        if first is None:
            raise APIError(503, "unavailable", "order %s is being decided by another platform process; try again" % (order,))
        return entryReply(first, refundsIn(entries)).repeated()

    # -- outcome ---------------------------------------------------------

    def outcome(self, order, terminal=None):
        """
        The recorded outcome of purchase C{order} of C{terminal}, from the
        journal.
        """
        service = self._service()
        if service is None or service.journal is None:
            raise APIError(503, "unavailable", "the platform's journal is not open yet; try again shortly")
        return Deferred.fromCoroutine(self._outcome(service, order, terminal))

    async def _outcome(self, service, order, terminal):
        entries = await service.journal.byOrder(order, terminal)
        purchases = purchasesIn(entries)
        entry = standing(purchases) or (purchases[-1] if purchases else None)
        if entry is None:
            raise APIError(404, "not-found", "no payment with order %s" % (order,), field="order", result="not-found")
        reply = entryReply(entry, refundsIn(entries))
        # Reading is always a success: the state says where the payment is.
        return Reply(200, reply.body, reply.result)

    # -- refund ----------------------------------------------------------

    def refund(self, order, amount, card=None, terminal=None):
        """
        Refund C{amount} fen of purchase C{order} of C{terminal}.
        """
        service = self.service()
        details = dict(amount=amount, card=card)
        flight = self.refunds.get((terminal, order))
        if flight is not None:
            conflict = APIError(
                409, "conflict", "another refund of order %s is in progress; try again once it is answered" % (order,),
                field="order",
            )
            return Deferred.fromCoroutine(self._repeat(flight, details, conflict))
        return self._fly(self.refunds, (terminal, order), details, self._refund(service, order, amount, card, terminal))

    async def _refund(self, service, order, amount, card, terminal):
        entries = await service.journal.byOrder(order, terminal)
        purchase = standing(purchasesIn(entries))
        if purchase is None or purchase["state"] != APPROVED:
            why = "no payment with order %s" % (order,)
            if purchase is not None:
                why = "the purchase of order %s is %s, not approved: there is nothing to refund" % (order, purchase["state"])
            raise APIError(404, "not-found", why, field="order", result="not-found")
        if card is not None:
            if maskedPan(card) != purchase["pan"]:
                raise invalid("card", "card is not the card of the purchase of order %s" % (order,))
        else:
            card = self.cards.get((terminal, order)) or service.journal.openedCard(purchase, "refund")
            if card is None:
                raise invalid(
                    "card",
                    "card is required to refund order %s: the platform keeps card numbers masked "
                    "(give it a --card-key to keep them sealed), and this purchase's is no longer in memory"
                    % (order,),
                )
        sender, stan, time = purchase["key"]
        message = {
            "mti": "0220",
            "proc": "200000",
            "pan": card,
            "amount": "%012d" % (amount,),
            "currency": purchase["currency"],
            "order": order,
            "orig": {"mti": "0200", "sender": sender, "stan": stan, "time": time},
        }
        body = {
            "order": order,
            "type": "refund",
            "amount": amount,
            "currency": purchase["currency"],
            "card": purchase["pan"],
            "original": reference(purchase["key"]),
        }
        try:
            answer = await self._send(service, message, terminal)
        except Exception:
            return self._unanswered(Failure(), body, "refund")
        resp = answer.get("resp")
        state = APPROVED if resp == wire.APPROVED else DECLINED
        body.update(
            state=state,
            resp=resp,
            message=stateMessage(state, resp, "refund"),
            reference=reference(wire.messageKey(answer)),
        )
        return Reply(200, body, state)

    # -- balance ---------------------------------------------------------

    def balance(self, card):
        """
        Ask the payment side for the balance of C{card}.
        """
        return Deferred.fromCoroutine(self._balance(self.service(), card))

    async def _balance(self, service, card):
        message = {"mti": "0200", "proc": "300000", "pan": card, "currency": "156"}
        try:
            answer = await self._send(service, message)
        except (RequestTimeout, LinkLost) as e:
            raise APIError(
                504,
                "timeout",
                "no answer from the payment system in time (%s); nothing moves on an inquiry, "
                "try again" % (e,),
                result="timeout",
            ) from None
        except Exception:
            return self._unanswered(Failure(), {}, "balance inquiry")
        resp = answer.get("resp")
        body = {"card": maskedPan(card), "resp": resp, "currency": answer.get("currency", "156")}
        balance = asFen(answer.get("balance"))
        if resp == wire.APPROVED and balance is not None:
            body.update(state=APPROVED, balance=balance, message="balance in fen")
            return Reply(200, body, APPROVED)
        body.update(state=DECLINED, message=stateMessage(DECLINED, resp, "balance inquiry"))
        return Reply(200, body, DECLINED)
