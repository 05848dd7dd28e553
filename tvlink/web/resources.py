"""
The terminal API's twisted.web resources (C{/v1} and below; the calls are
described in L{tvlink.web.terminal}): each request runs one call of a
L{tvlink.web.terminal.TerminalAPI}, bounded by the terminal's deadline,
counted, and answered in JSON.
"""

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from tvlink.platform.journal import PENDING
from tvlink.web.orders import stateMessage
from tvlink.web.responses import JSONResource, NotFound, watch, writeJSON
from tvlink.web.validation import APIError, Reply, checkAmount, checkCard, checkCurrency, checkOrder, parseBody


class _Call(JSONResource):
    """
    Runs one API call per request: bounded by the terminal deadline,
    counted, answered in JSON.
    """

    isLeaf = False
    kind = None
    log = Logger(namespace="tvlink.web")

    def __init__(self, api, terminal=None):
        JSONResource.__init__(self)
        self.api = api
        #: The terminal the request authenticated as (C{None}: the API
        #: is open).
        self.terminal = terminal

    def serve(self, request, call):
        """
        Answer C{request} with what C{call(context)} gives; C{context} is a
        dict where the call notes the C{order} it is about, for the answer
        given at the deadline.
        """
        api = self.api
        try:
            api.begin()
        except APIError as e:
            self._write(e.reply(), request)
            return NOT_DONE_YET
        watch(request)
        context = {"order": getattr(self, "order", None)}
        d = maybeDeferred(call, context)
        d.addBoth(self._ended)
        answer = self._bounded(d, context)
        answer.addErrback(self._asReply)
        answer.addCallback(self._write, request)
        answer.addErrback(lambda f: self.log.failure("writing a terminal API answer failed", f))
        return NOT_DONE_YET

    def _ended(self, result):
        self.api.end()
        return result

    def _bounded(self, d, context):
        """
        C{d}, or a C{504 pending} answer if it has not fired by the time the
        terminal must be answered. C{d} is never cancelled: a purchase in
        flight finishes, and the journal records it.
        """
        api = self.api
        service = api.currentService()
        if service is None:
            return d
        answer = Deferred()

        def late():
            order = context.get("order")
            if not answer.called:
                body = {
                    "error": "deadline",
                    "state": PENDING,
                    "message": stateMessage(PENDING, None, self.kind),
                }
                if order is not None:
                    body["order"] = order
                answer.callback(Reply(504, body, "timeout"))

        call = api.clock.callLater(api.answerBy(service), late)

        def fired(result):
            if call.active():
                call.cancel()
            if not answer.called:
                answer.callback(result)
            elif hasattr(result, "check") and not result.check(APIError):
                # Already answered 504 pending; the journal has the outcome,
                # the log has this.
                self.log.failure("terminal API call failed after its deadline answer", result)
            return None

        d.addBoth(fired)
        return answer

    def _asReply(self, failure):
        if failure.check(APIError):
            return failure.value.reply()
        self.log.failure("terminal API call failed", failure)
        return APIError(500, "error", "the platform failed to handle this call; see its log").reply()

    def _write(self, reply, request):
        self.api.count(self.kind, reply.result)
        writeJSON(request, reply.code, reply.body, reply.headers + self.api.access.origins.headersFor(request))

    def render_OPTIONS(self, request):
        return self.api.access.origins.preflight(request)


class PaymentsResource(_Call):
    """
    C{/v1/payments}: C{POST} a purchase; C{/v1/payments/ORDER} below it.
    """

    isLeaf = False
    kind = "purchase"

    def getChild(self, name, request):
        try:
            order = checkOrder(name.decode("utf-8"))
        except (UnicodeDecodeError, APIError):
            return NotFound("no payment with that order id (an order id is 1 to 64 printable characters)")
        return OrderResource(self.api, order, self.terminal)

    def render_POST(self, request):
        def call(context):
            data = parseBody(request)
            card = checkCard(data.get("card"))
            amount = checkAmount(data.get("amount"))
            currency = checkCurrency(data.get("currency"))
            order = context["order"] = checkOrder(data.get("order"))
            return self.api.purchase(order, card, amount, currency, terminal=self.terminal)

        return self.serve(request, call)


class OrderResource(_Call):
    """
    C{/v1/payments/ORDER}: C{GET} its outcome; C{.../refund} below it.
    """

    isLeaf = False
    kind = "outcome"

    def __init__(self, api, order, terminal=None):
        _Call.__init__(self, api, terminal)
        self.order = order

    def getChild(self, name, request):
        if name == b"refund":
            return RefundResource(self.api, self.order, self.terminal)
        if name == b"":
            return self
        return NotFound()

    def _bounded(self, d, context):
        return d

    def render_GET(self, request):
        return self.serve(request, lambda context: self.api.outcome(self.order, terminal=self.terminal))


class RefundResource(_Call):
    """
    C{/v1/payments/ORDER/refund}: C{POST} a refund.
    """

    kind = "refund"

    def __init__(self, api, order, terminal=None):
        _Call.__init__(self, api, terminal)
        self.order = order

    def render_POST(self, request):
        def call(context):
            data = parseBody(request)
            amount = checkAmount(data.get("amount"))
            card = data.get("card")
            if card is not None:
                card = checkCard(card)
            return self.api.refund(self.order, amount, card, terminal=self.terminal)

        return self.serve(request, call)


class BalanceResource(_Call):
    """
    C{/v1/balance}: C{POST} a balance inquiry.
    """

    kind = "balance"

    def render_POST(self, request):
        def call(context):
            data = parseBody(request)
            return self.api.balance(checkCard(data.get("card")))

        return self.serve(request, call)


class V1Resource(JSONResource):
    """
    C{/v1}: with C{api.keys} set, every request below it must carry a
    terminal's key (C{Authorization: Bearer KEY}), or is answered C{401};
    the calls then act for that terminal only.
    """

    calls = {b"payments": PaymentsResource, b"balance": BalanceResource}

    def __init__(self, api):
        JSONResource.__init__(self)
        self.api = api

    def getChild(self, name, request):
        kind = self.calls.get(name)
        if kind is None:
            return NotFound()
        if request.method == b"OPTIONS":
            # A preflight carries no credentials: the origin decides.
            return kind(self.api)
        refused, terminal = self.api.access.authenticate(request)
        if refused is not None:
            return refused
        return kind(self.api, terminal)

    def render_OPTIONS(self, request):
        return self.api.access.origins.preflight(request)

    def render_GET(self, request):
        refused, _ = self.api.access.authenticate(request)
        if refused is not None:
            return refused.render(request)
        writeJSON(
            request,
            200,
            {
                "endpoints": [
                    "POST /v1/payments {card, amount, currency, order}",
                    "GET /v1/payments/ORDER",
                    "POST /v1/payments/ORDER/refund {amount, card}",
                    "POST /v1/balance {card}",
                ]
            },
            self.api.access.origins.headersFor(request),
        )
        return NOT_DONE_YET
