"""
What the platform and payment services share: settings from keyword
options, the optional echo-test prober, status snapshots, and a clean stop.
"""

from twisted.application.service import Service
from twisted.internet.defer import fail, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tvlink.link import wire
from tvlink.link.settings import LinkSettings


class LinkService(Service):
    """
    Base of L{tvlink.PlatformService} and L{tvlink.PaymentService}.

    @ivar settings: the L{LinkSettings} every link of the service shares.
    @ivar factories: the link factories (one per endpoint on the platform,
        one on the payment side).
    """

    log = Logger(namespace="tvlink.service")
    role = None
    defaultSender = None

    def __init__(self, handler=None, echo_interval=0, **options):
        options.setdefault("sender", self.defaultSender)
        self.settings = LinkSettings(**options)
        self.reactor = self.settings.reactor
        self.handler = handler
        self.echo_interval = float(echo_interval or 0)
        if self.echo_interval < 0:
            raise ValueError("echo_interval must not be negative")
        self.factories = []
        self._echo = None

    def links(self):
        """
        Every connected link of the service.
        """
        return [link for f in self.factories for link in f.links]

    def readyLinks(self):
        return [link for f in self.factories for link in f.readyLinks]

    def startService(self):
        Service.startService(self)
        if self.echo_interval:
            self._echo = LoopingCall(self.echoAll)
            self._echo.clock = self.reactor
            self._echo.start(self.echo_interval, now=False)

    def stopService(self):
        Service.stopService(self)
        if self._echo is not None and self._echo.running:
            self._echo.stop()
        return gatherResults([f.closeAll() for f in self.factories]).addCallback(lambda _: None)

    def echoAll(self):
        """
        Send an echo test (C{0800}/C{301}) on every ready link and log the
        round trip.
        """
        for link in self.readyLinks():
            started = self.reactor.seconds()
            d = link.request({"mti": "0800", "nmi": wire.ECHO_TEST})
            d.addCallbacks(
                self._echoed, self._echoFailed, (link, started), None, (link,)
            )

    def _echoed(self, answer, link, started):
        self.log.info(
            "echo test on {peer} answered {resp} in {ms:.1f}ms",
            link_event="echo",
            peer=link.peer,
            resp=answer.get("resp"),
            ms=(self.reactor.seconds() - started) * 1000,
        )

    def _echoFailed(self, failure, link):
        self.log.warn(
            "echo test on {peer} failed: {why}",
            link_event="echo-failed",
            peer=link.peer,
            why=failure.getErrorMessage(),
        )

    def status(self):
        """
        A snapshot of every link, as plain data (for status pages and
        tests).
        """
        now = self.reactor.seconds()
        result = []
        for f in self.factories:
            for link in sorted(f.links, key=lambda l: l.connectedAt):
                entry = {
                    "peer": link.peer,
                    "endpoint": getattr(f, "endpoint", None),
                    "state": link.state,
                    "inFlight": link.inFlight(),
                    "sinceFrameIn": now - link.lastFrameIn,
                    "sinceFrameOut": now - link.lastFrameOut,
                }
                entry.update(link.counters)
                result.append(entry)
        return result


def failNow(exception):
    """
    A failed L{Deferred}, for API methods that report errors
    asynchronously.
    """
    return fail(exception)
