"""
The file-service options of the twistd roles: the payment side's
C{--files-listen}, C{--files-dir}, its limits and C{--day-cutover}; the
platform's C{--files-connect}. L{withFiles} puts the file service (and
the daily reconciliation files) beside the role's service.
"""

import os

from twisted.logger import Logger
from twisted.python import usage

from tvlink.files import server as defaults
from tvlink.link.settings import positive

log = Logger(namespace="tvlink.files")


class PaymentFilesOptions(usage.Options):
    """
    The payment side's file service; L{_filesOptions} checks them into
    C{filesOptions} (C{None} without C{--files-listen}).
    """

    optParameters = [
        ["files-listen", None, None, "Serve files (one short connection per transfer) on this endpoint, e.g. "
         "tcp:7001:interface=127.0.0.1; the --tls-* options apply to it too (default: off)"],
        ["files-dir", None, None, "The files, one directory per sender institution (required with --files-listen)"],
        ["files-idle-timeout", None, str(defaults.DEFAULT_IDLE), "Drop a transfer this long without progress (s)"],
        ["files-total-timeout", None, str(defaults.DEFAULT_TOTAL), "Drop a transfer this long after it began (s)"],
        ["files-max-transfers", None, str(defaults.DEFAULT_MAX_TRANSFERS), "Downloads and uploads at once (beyond: 91)"],
        ["files-max-size", None, str(defaults.DEFAULT_MAX_SIZE), "Largest upload accepted, in bytes (beyond: 13)"],
        ["files-sender-check", None, "auto", "cn: a client acts only for the sender its TLS client certificate's "
         "common name gives (needs --tls-ca); none: for the sender it names; auto: cn with --tls-ca, else none"],
        ["day-cutover", None, "00:00", "Cut-over HH:MM[:SS] ending each day of the reconciliation files, local time; "
         "each sender's file of the day is written to --files-dir shortly after it"],
    ]

    def _filesOptions(self):
        self.filesOptions = None
        listen, folder = self["files-listen"], self["files-dir"]
        if listen is None:
            if folder is not None:
                raise usage.UsageError("--files-dir needs --files-listen ENDPOINT")
            return
        if folder is None:
            raise usage.UsageError("--files-listen needs --files-dir DIR")
        if not os.path.isdir(folder):
            raise usage.UsageError("--files-dir: %r is not a directory" % (folder,))
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor

        try:
            serverFromString(MemoryReactor(), listen)
        except (ValueError, TypeError) as e:
            raise usage.UsageError("--files-listen: %s" % (e,)) from None
        options = {"listen": listen, "directory": folder}
        try:
            options["idle"] = positive("--files-idle-timeout", self["files-idle-timeout"])
            options["total"] = positive("--files-total-timeout", self["files-total-timeout"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        for option, keyword, least in (("files-max-transfers", "max_transfers", 1), ("files-max-size", "max_size", 0)):
            value = self[option]
            if not value.isdigit() or int(value) < least:
                raise usage.UsageError("--%s must be a whole number of at least %d, not %r" % (option, least, value))
            options[keyword] = int(value)
        from tvlink.files.server import SENDER_CHECKS

        check = self["files-sender-check"]
        if check == "auto":
            # Under mutual TLS the certificate says who the client is: it
            # may act for that institution only.
            check = "cn" if self.get("tls-ca") is not None else "none"
        if check not in SENDER_CHECKS:
            raise usage.UsageError(
                "--files-sender-check must be one of auto, %s, not %r" % (", ".join(SENDER_CHECKS), check)
            )
        if check != "none" and self.get("tls-ca") is None:
            raise usage.UsageError("--files-sender-check %s reads the client certificate: it needs --tls-ca" % (check,))
        options["sender_check"] = check
        from tvlink.files.reconcile import parseCutover

        try:
            self.cutover = parseCutover(self["day-cutover"])
        except ValueError as e:
            raise usage.UsageError("--day-cutover: %s" % (e,)) from None
        self.filesOptions = options


class PlatformFilesOptions(usage.Options):
    """
    The platform's C{--files-connect}: where L{tvlink.PlatformService}'s
    file calls go.
    """

    optParameters = [
        ["files-connect", None, None, "The payment node's file service HOST:PORT, for the platform's file calls"],
    ]

    def _filesOptions(self):
        value = self["files-connect"]
        if value is None:
            return
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise usage.UsageError("--files-connect must be HOST:PORT, not %r" % (value,))
        self.linkOptions["files_endpoint"] = value


def withFiles(config, role, service):
    """
    C{service} (the role's service C{role}, perhaps with its web side)
    alone, or with C{--files-listen} a L{tvlink.web.ServiceStack} of it,
    the file service and, on a ledger, the daily reconciliation files.
    """
    options = getattr(config.subOptions, "filesOptions", None)
    if options is None:
        return service
    from tvlink.files.service import FileService
    from tvlink.web import ServiceStack

    options = dict(options)
    files = FileService(options.pop("listen"), options.pop("directory"), role.settings, tls=role.tls, **options)
    stack = ServiceStack()
    stack.role, stack.service, stack.files = role.role, role, files
    stack.web = getattr(service, "web", None)
    files.setServiceParent(stack)
    # Its figures are in the role's /metrics.
    role.files = files
    service.setServiceParent(stack)
    ledger = getattr(role, "ledger", None)
    if ledger is None:
        log.info(
            "files: no reconciliation files are written without a ledger (--ledger memory)",
            files_event="no-reconciliation",
        )
    else:
        from tvlink.files.daily import DailyReconciliation

        stack.daily = DailyReconciliation(
            ledger, files.store, role.settings.sender, role.reactor, config.subOptions.cutover
        )
        stack.daily.setServiceParent(stack)
    return stack
