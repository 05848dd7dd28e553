"""
The twistd application: C{twistd -n tvlink payment|platform|sandbox ...}.
"""

from twisted.logger import Logger
from twisted.python import usage

import os

from tvlink import wire
from tvlink.journal import parseJournalOption
from tvlink.link import positive
from tvlink.platform import parseGroups
from tvlink.pool import BALANCERS

log = Logger(namespace="tvlink.tap")


def _seconds(name, default, doc):
    return [name, None, str(default), doc + " (seconds, may be fractional)"]


class _LinkOptions(usage.Options):
    """
    Options both roles take.
    """

    #: option name -> keyword of LinkSettings, for the seconds options.
    secondsOptions = {
        "heartbeat": "heartbeat",
        "idle-timeout": "idle_timeout",
        "frame-timeout": "frame_timeout",
    }

    optParameters = [
        _seconds("heartbeat", 60, "Write-idle time before sending an idle-query frame"),
        _seconds("idle-timeout", 180, "Read-idle time after which the link is declared dead"),
        _seconds("frame-timeout", 30, "Time a started frame may take to arrive whole"),
        ["header", None, "ascii4", "Frame header: ascii4, bin2 or bin4"],
        ["max-frame", None, str(wire.DEFAULT_MAX_FRAME), "Largest frame body in bytes"],
        ["echo-interval", None, "0", "Send an echo test on every ready link this often (0: off)"],
    ]

    def postOptions(self):
        self.linkOptions = {}
        for option, keyword in self.secondsOptions.items():
            self.linkOptions[keyword] = self._positive(option)
        echo = self["echo-interval"]
        self.echo_interval = 0.0 if echo in ("0", "0.0") else self._positive("echo-interval")
        if self["header"] not in wire.HEADERS:
            raise usage.UsageError(
                "--header must be one of %s, not %r" % (", ".join(sorted(wire.HEADERS)), self["header"])
            )
        self.linkOptions["header"] = self["header"]
        maxFrame = self["max-frame"]
        if not maxFrame.isdigit() or int(maxFrame) < 1:
            raise usage.UsageError("--max-frame must be a positive number of bytes, not %r" % (maxFrame,))
        self.linkOptions["max_frame"] = int(maxFrame)
        sender = self["sender"]
        if not sender or not sender.isascii() or not sender.isprintable():
            raise usage.UsageError("--sender must be a non-empty printable ASCII id, not %r" % (sender,))
        self.linkOptions["sender"] = sender

    def _positive(self, option):
        try:
            return positive("--" + option, self[option])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class PaymentOptions(_LinkOptions):
    synopsis = "--listen ENDPOINT [options]"
    longdesc = "Run the payment side: listen for platform links."
    optParameters = [
        ["listen", None, None, "Server endpoint to listen on, e.g. tcp:7000:interface=127.0.0.1"],
        ["sender", None, "PAYMENT", "This node's institution id"],
    ]

    def postOptions(self):
        if not self["listen"]:
            raise usage.UsageError("--listen ENDPOINT is required")
        _LinkOptions.postOptions(self)


class PlatformOptions(_LinkOptions):
    synopsis = "--connect HOST:PORT[,HOST:PORT...] [--connect ...] [options]"
    longdesc = (
        "Run the platform side: keep links to each payment endpoint and spread "
        "requests over them. Endpoints joined by commas in one --connect form a "
        "priority group for --balance primary."
    )
    secondsOptions = dict(
        _LinkOptions.secondsOptions,
        timeout="timeout",
        cooldown="cooldown",
        ramp="ramp",
        **{"terminal-deadline": "terminal_deadline"}
    )
    optParameters = [
        _seconds("timeout", 40, "Time to wait for the payment side's answer"),
        ["sender", None, "PLATFORM", "This node's institution id"],
        ["links-per-endpoint", None, "1", "Links opened to each payment endpoint"],
        ["balance", None, "least-pending", "Strategy: least-pending, round-robin or primary"],
        ["max-queued", None, "1000", "Requests that may wait for a ready link at once"],
        ["eject-after", None, "5", "Timeouts in a row that eject a link for a cool-down"],
        _seconds("cooldown", 30, "Rest of an ejected link before its echo-test probe"),
        _seconds("ramp", 30, "Time over which a recovered link regains its full share"),
        _seconds("terminal-deadline", 60, "The TV terminal's deadline; --timeout must be below it"),
        ["journal", None, None, "Journal money-moving requests and reverse those in doubt: sqlite:PATH"],
    ]

    #: option name -> (keyword, smallest value), for the count options.
    countOptions = {
        "links-per-endpoint": ("links_per_endpoint", 1),
        "max-queued": ("max_queued", 0),
        "eject-after": ("eject_after", 1),
    }

    def __init__(self):
        _LinkOptions.__init__(self)
        self["connect"] = []

    def opt_connect(self, endpoint):
        """
        Payment endpoint HOST:PORT, or several joined by commas as one
        priority group (repeat for more)
        """
        try:
            parseGroups([endpoint])
        except ValueError as e:
            raise usage.UsageError("--connect: %s" % (e,)) from None
        self["connect"].append(endpoint)

    def postOptions(self):
        if not self["connect"]:
            raise usage.UsageError("--connect HOST:PORT is required (at least one)")
        _LinkOptions.postOptions(self)
        for option, (keyword, least) in self.countOptions.items():
            value = self[option]
            if not value.isdigit() or int(value) < least:
                raise usage.UsageError(
                    "--%s must be a whole number of at least %d, not %r" % (option, least, value)
                )
            self.linkOptions[keyword] = int(value)
        if self["balance"] not in BALANCERS:
            raise usage.UsageError(
                "--balance must be one of %s, not %r" % (", ".join(sorted(BALANCERS)), self["balance"])
            )
        self.linkOptions["balance"] = self["balance"]
        if not self.linkOptions["timeout"] < self.linkOptions["terminal_deadline"]:
            raise usage.UsageError(
                "--timeout (%gs) must be below --terminal-deadline (%gs)"
                % (self.linkOptions["timeout"], self.linkOptions["terminal_deadline"])
            )
        if self["journal"] is not None:
            try:
                path = parseJournalOption(self["journal"])
            except ValueError as e:
                raise usage.UsageError("--journal: %s" % (e,)) from None
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise usage.UsageError("--journal: folder %r does not exist" % (folder,))
            self.linkOptions["journal"] = "sqlite:" + path


class SandboxOptions(_LinkOptions):
    synopsis = "[options]"
    longdesc = (
        "Run both roles in one process, linked over loopback TCP, with the demo "
        "account handler, and make one demo purchase."
    )
    optParameters = [
        ["port", None, "0", "Loopback port the payment side listens on (0: any free port)"],
        ["sender", None, "PLATFORM", "The platform's institution id"],
    ]

    def postOptions(self):
        _LinkOptions.postOptions(self)
        if not self["port"].isdigit() or int(self["port"]) > 65535:
            raise usage.UsageError("--port must be 0-65535, not %r" % (self["port"],))


class Options(usage.Options):
    synopsis = "payment|platform|sandbox [options]"
    longdesc = "tvlink: the JR/T 0109.4 link between a TV platform and a payment system."
    subCommands = [
        ["payment", None, PaymentOptions, "Run the payment side (server)"],
        ["platform", None, PlatformOptions, "Run the platform side (client)"],
        ["sandbox", None, SandboxOptions, "Run both sides linked on loopback"],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("name a role: payment, platform or sandbox")


def makeService(config, reactor=None):
    """
    Build the service twistd runs from parsed L{Options}.
    """
    sub = config.subOptions
    options = dict(sub.linkOptions, echo_interval=sub.echo_interval)
    if reactor is not None:
        options["reactor"] = reactor
    if config.subCommand == "payment":
        from tvlink.payment import PaymentService

        return PaymentService(sub["listen"], **options)
    if config.subCommand == "platform":
        from tvlink.platform import PlatformService

        return PlatformService(sub["connect"], **options)
    from tvlink.sandbox import SandboxService

    return SandboxService(port=int(sub["port"]), **options)
