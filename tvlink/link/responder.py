"""
L{Responder}: the half of a link that answers the peer's requests, mixed
into L{tvlink.link.protocol.LinkProtocol}.

It checks a request, answers network management (C{0800}: sign-on,
sign-off, echo) itself, refuses what the link's limits do not allow
(C{91}), hands the rest to the factory's L{IMessageHandler} and sends its
answer back with the request's key, or C{96} when the handler fails and
C{30} for a body that is not a usable message.
"""

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tvlink.errors import CodecError
from tvlink.link import wire


class Responder:
    """
    Answers the requests that arrive on a link. Mixed into
    L{tvlink.link.protocol.LinkProtocol}, whose C{state}, C{peer},
    C{counters}, C{factory}, C{log} and C{sendMessage} it uses.
    """

    #: Handler calls under way on this link.
    handling = 0

    def requestReceived(self, message):
        mti = message.get("mti")
        if not (
            type(mti) is str
            and len(mti) == 4
            and mti.isdigit()
            and type(message.get("sender")) is str
            and type(message.get("stan")) is str
            and type(message.get("time", "")) is str
        ):
            self.formatError(message, "message lacks a valid mti, sender or stan")
            return
        self.counters["requestsIn"] += 1
        state = self.state
        if mti == "0800":
            answer = self.networkManagement(message)
            if answer is None:
                self.formatError(message, "0800 without an nmi")
            else:
                self.answer(message, answer)
            return
        if state != "ready":
            if state in ("closing", "lost"):
                self.log.warn(
                    "request {mti} {key} from {peer} not handled: the link is {state}",
                    mti=mti,
                    key=wire.keyText(wire.messageKey(message)),
                    peer=self.peer,
                    state=state,
                )
                return
            if self.factory.requireSignOn:
                self.log.warn(
                    "request {mti} {key} from {peer} before sign-on; answering 91",
                    link_event="not-signed-on",
                    mti=mti,
                    key=wire.keyText(wire.messageKey(message)),
                    peer=self.peer,
                )
                self.answer(message, {"resp": wire.DESTINATION_UNAVAILABLE})
                return
        factory = self.factory
        if self.handling >= self._maxInFlight or factory.handling >= self._maxHandling:
            factory.limits.hit(
                "max-in-flight" if self.handling >= self._maxInFlight else "max-handling",
                self.peer,
                "request %s %s (answered 91)" % (mti, wire.keyText(wire.messageKey(message))),
            )
            self.answer(message, {"resp": wire.DESTINATION_UNAVAILABLE})
            return
        try:
            answer = factory.handler.handle(message)
        except BaseException:
            self._handlerFailed(Failure(), message)
            return
        if type(answer) is dict and type(answer.get("resp")) is str:
            self.answer(message, answer)
        elif isinstance(answer, Deferred):
            self.handling += 1
            factory.handling += 1
            answer.addCallbacks(self._handled, self._handlerFailed, (message, True), None, (message, True))
        else:
            self._handled(answer, message)

    def _handled(self, answer, request, counted=False):
        if counted:
            self.handling -= 1
            self.factory.handling -= 1
        if type(answer) is not dict or type(answer.get("resp")) is not str:
            self.log.error(
                "handler gave no response code for {key} from {peer}; answering 96",
                key=wire.keyText(wire.messageKey(request)),
                peer=self.peer,
            )
            answer = {"resp": wire.SYSTEM_MALFUNCTION}
        self.answer(request, answer)

    def _handlerFailed(self, failure, request, counted=False):
        if counted:
            self.handling -= 1
            self.factory.handling -= 1
        self.log.failure(
            "handler failed on {mti} {key} from {peer}; answering 96",
            failure,
            mti=request.get("mti"),
            key=wire.keyText(wire.messageKey(request)),
            peer=self.peer,
        )
        self.answer(request, {"resp": wire.SYSTEM_MALFUNCTION})

    def networkManagement(self, message):
        """
        Answer a C{0800}: sign-on, sign-off and echo test; C{None} if it
        has no C{nmi}.
        """
        nmi = message.get("nmi")
        if type(nmi) is not str:
            return None
        if nmi == wire.ECHO_TEST:
            return {"nmi": nmi, "resp": wire.APPROVED}
        if nmi == wire.SIGN_ON:
            resp = self.factory.signOnReceived(self, message)
            if resp == wire.APPROVED and self.state == "up":
                self.signedOff = False
                self.becomeReady()
            return {"nmi": nmi, "resp": resp}
        if nmi == wire.SIGN_OFF:
            self.signedOff = True
            if self.state == "ready":
                self.state = "up"
                self.log.info("link {peer} signed off by peer", link_event="signed-off", peer=self.peer)
                self.factory.linkNotReady(self)
                self.factory.signOffReceived(self)
            return {"nmi": nmi, "resp": wire.APPROVED}
        return {"nmi": nmi, "resp": wire.INVALID_TRANSACTION}

    def answer(self, request, answer):
        """
        Send C{answer} (a C{dict}) as the response to C{request}. An answer
        that cannot be encoded is logged and answered C{96} instead.
        """
        response = dict(answer)
        response["mti"] = wire.RESPONSE_MTI.get(request["mti"]) or wire.responseMTI(request["mti"])
        response["sender"] = request["sender"]
        response["stan"] = request["stan"]
        if "time" in request:
            response["time"] = request["time"]
        if self.state in ("lost", "closing"):
            self.log.warn(
                "answer {resp} to {key} not sent: link {peer} is {state}",
                resp=response.get("resp"),
                key=wire.keyText(wire.messageKey(request)),
                peer=self.peer,
                state=self.state,
            )
            return
        try:
            self.sendMessage(response)
        except CodecError as e:
            self.log.error(
                "answer to {key} from {peer} cannot be sent ({why}); answering 96",
                key=wire.keyText(wire.messageKey(request)),
                peer=self.peer,
                why=str(e),
            )
            response = {"mti": response["mti"], "sender": request["sender"], "stan": request["stan"], "resp": wire.SYSTEM_MALFUNCTION}
            if "time" in request:
                response["time"] = request["time"]
            self.sendMessage(response)

    def formatError(self, body, reason):
        """
        A body that is not a usable message: answer C{30} if its key can be
        read, else log and drop it. The link stays up.
        """
        self.counters["formatErrors"] += 1
        salvage = getattr(self._codec, "salvage", None) or wire.salvageKey
        found = salvage(body)
        self.log.warn(
            "format error from {peer}: {reason}; {action}",
            link_event="format-error",
            peer=self.peer,
            reason=reason,
            action="answering 30" if found else "dropped (no key to answer)",
        )
        self.factory.formatErrorReceived(self, reason)
        if found is not None:
            self.answer(found, {"resp": wire.FORMAT_ERROR})
