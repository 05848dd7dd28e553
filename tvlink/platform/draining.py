"""
Taking a payment endpoint out of service and back (L{Draining}, mixed into
L{tvlink.platform.service.PlatformService}): no new requests for it, those
in flight answered, a sign-off, a close; and a fresh link once it is
resumed.
"""

from twisted.internet.defer import DeferredList

from tvlink.link import wire
from tvlink.link.service import failNow
from tvlink.link.settings import succeedWith


class Draining:
    """
    Mixin for the platform service, whose C{factories} (the link slots),
    C{settings}, C{log}, C{reactor}, C{stopping} and C{_connect} it uses,
    and whose cached list of candidate links (C{_healthy}) it clears when a
    slot starts draining.
    """

    def drain(self, endpoint):
        """
        Take C{endpoint} (C{"HOST:PORT"}) out of service: no new requests,
        in-flight ones finish (up to their timeout), then a sign-off and a
        close. Returns a L{Deferred} that fires when every link to it is
        closed.
        """
        factories = [f for f in self.factories if f.endpoint == endpoint]
        if not factories:
            return failNow(ValueError("no such endpoint %r" % (endpoint,)))
        return DeferredList([self._drainSlot(f) for f in factories]).addCallback(lambda _: None)

    def resume(self, endpoint):
        """
        Put a drained C{endpoint} back in service.
        """
        for f in self.factories:
            if f.endpoint == endpoint and f.draining:
                if f.link is None:
                    self._connect(f)
                else:
                    # Still draining: connect afresh once the old link is
                    # gone, so the slot never holds two.
                    f.resumeWhenDrained = True

    def _drainSlot(self, factory):
        factory.draining = True
        self._healthy = None
        factory.stopTrying()
        link = factory.link
        if link is None:
            self._drained(None, factory, None)
            return succeedWith(None)
        d = link.pending.whenEmpty()
        d.addCallback(self._signOff, link)
        d.addBoth(self._drained, factory, link)
        return d

    def _signOff(self, _, link):
        if link.state != "ready":
            return None
        d = link.request({"mti": "0800", "nmi": wire.SIGN_OFF}, timeout=min(5.0, self.settings.timeout))
        d.addErrback(lambda f: None)
        return d

    def _drained(self, result, factory, link):
        if link is not None and link.state not in ("closing", "lost"):
            closing = link.whenLost()
            link.close("drained")
        else:
            closing = succeedWith(None)
        self.log.info(
            "link to {endpoint} drained", link_event="drained", endpoint=factory.endpoint
        )
        factory.linkEvent("drained", link)
        return closing.addCallback(self._afterDrain, factory)

    def _afterDrain(self, _, factory):
        if factory.resumeWhenDrained and not self.stopping:
            factory.resumeWhenDrained = False
            # After the connector has seen the loss (it must not retry).
            self.reactor.callLater(0, self._connect, factory)
