"""
C{tvlink files}: the platform operator's client of a payment node's file
service.

    tvlink files put  --connect HOST:PORT --sender ID [options] SRC NAME
    tvlink files get  --connect HOST:PORT --sender ID [options] NAME DEST
    tvlink files list --connect HOST:PORT --sender ID [options]

A download resumes from C{DEST.part} when the file on the server is
still the same; an upload resumes from what the server kept. On a
terminal a progress bar is drawn on standard error; otherwise nothing
but the outcome is printed.

Exit status: 0 done; 1 refused by the server (a name it does not allow,
no such file, over a limit, busy); 2 bad arguments; 3 corrupt (size or
SHA-256 wrong, nothing renamed into place); 4 connection failed, cut off
or timed out (run it again to resume); 5 a local file cannot be read or
written.
"""

import sys

from twisted.internet import task
from twisted.internet.defer import Deferred

from tvlink.cli.commands import CommandParser, parseArguments
from tvlink.files import protocol as fp
from tvlink.files.names import NameRefused, checkName, checkSender
from tvlink.link import wire

OK = 0
REFUSED = 1
USAGE = 2
CORRUPT = 3
CUT = 4
LOCAL = 5


def _parser(out, err):
    parser = CommandParser(
        prog="tvlink files",
        description="Send, fetch and list files on a payment node.",
        epilog="exit status: 0 done, 1 refused by the node, 2 bad arguments, 3 corrupt (nothing kept), "
        "4 connection failed, cut off or timed out (run again to resume), 5 a local file cannot be read or written",
        out=out,
        err=err,
    )
    common = CommandParser(add_help=False)
    common.add_argument("--connect", required=True, metavar="HOST:PORT", help="the payment node's files port")
    common.add_argument("--sender", required=True, metavar="ID", help="this platform's institution id")
    common.add_argument("--tls-cert", metavar="FILE", help="present this client certificate (PEM; key may follow)")
    common.add_argument("--tls-key", metavar="FILE", help="the client certificate's key")
    common.add_argument("--tls-ca", metavar="FILE", help="over TLS, trusting the payment node's CA in this file")
    common.add_argument("--tls-hostname", metavar="NAME", help="name the node's certificate must carry")
    common.add_argument("--header", default="ascii4", choices=sorted(wire.HEADERS), help="frame header (as the node's)")
    common.add_argument("--max-frame", type=int, default=wire.DEFAULT_MAX_FRAME, metavar="BYTES")
    common.add_argument("--idle", type=float, default=60.0, metavar="S", help="give up after S seconds without progress")
    common.add_argument("--total", type=float, default=3600.0, metavar="S", help="give up after S seconds in all")
    common.add_argument("--quiet", action="store_true", help="no progress bar, even on a terminal")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, help, positional in (
        ("put", "send a file", (("src", "SRC", "the local file"), ("name", "NAME", "its name on the node"))),
        ("get", "fetch a file", (("name", "NAME", "its name on the node"), ("dest", "DEST", "where to write it"))),
        ("list", "list this sender's files", ()),
    ):
        sub = commands.add_parser(name, help=help, description=help, parents=[common], out=out, err=err)
        for dest, metavar, text in positional:
            sub.add_argument(dest, metavar=metavar, help=text)
    return parser


class ProgressBar:
    """
    A one-line bar on a terminal, redrawn at most ten times a second.
    """

    width = 30

    def __init__(self, stream, clock, label):
        self.stream = stream
        self.clock = clock
        self.label = label
        self.started = clock.seconds()
        self.drawn = None

    def __call__(self, done, size):
        now = self.clock.seconds()
        if self.drawn is not None and now - self.drawn < 0.1 and done < size:
            return
        self.drawn = now
        share = done / size if size else 1.0
        rate = done / max(now - self.started, 1e-6) / 1048576
        filled = int(share * self.width)
        self.stream.write(
            "\r%s [%s%s] %3d%% %.1f MiB/s" % (self.label, "#" * filled, " " * (self.width - filled), share * 100, rate)
        )
        if done >= size:
            self.stream.write("\n")
        self.stream.flush()


def _client(args, reactor):
    from tvlink.files.client import FileClient
    from tvlink.link.settings import LinkSettings
    from tvlink.link.tls import ClientTLS

    host, _, port = args.connect.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("--connect must be HOST:PORT, not %r" % (args.connect,))
    checkSender(args.sender)
    tls = None
    if any(v is not None for v in (args.tls_cert, args.tls_key, args.tls_ca, args.tls_hostname)):
        tls = ClientTLS(args.tls_cert, args.tls_key, args.tls_ca, args.tls_hostname)
    settings = LinkSettings(reactor=reactor, sender=args.sender, header=args.header, max_frame=args.max_frame)
    return FileClient(host, int(port), args.sender, tls=tls, settings=settings, idle=args.idle, total=args.total)


async def run(reactor, argv, out, err, tty=None):
    """
    Run C{tvlink files ARGV...} on C{reactor}; the exit status.
    """
    args, status = parseArguments(_parser(out, err), list(argv), USAGE)
    if args is None:
        return status
    try:
        client = _client(args, reactor)
        if args.command in ("put", "get"):
            checkName(args.name)
    except (ValueError, NameRefused) as e:
        err.write("tvlink files: %s\n" % (e,))
        return USAGE
    tty = err.isatty() if tty is None else tty
    progress = None if args.quiet or not tty else ProgressBar(err, reactor, args.command + " " + args.name)
    try:
        if args.command == "list":
            files = await client.list()
            for entry in files:
                out.write("%-40s %15d  %s\n" % (entry["name"], entry["size"], entry["mtime"]))
            out.write("%d file%s\n" % (len(files), "" if len(files) == 1 else "s"))
            return OK
        if args.command == "put":
            result = await client.put(args.src, args.name, progress)
        else:
            result = await client.get(args.name, args.dest, progress)
    except fp.Corrupt as e:
        err.write("tvlink files %s: corrupt, not kept: %s\n" % (args.command, e))
        return CORRUPT
    except fp.Refused as e:
        err.write("tvlink files %s: refused: %s\n" % (args.command, e))
        return REFUSED
    except fp.TransferError as e:
        err.write("tvlink files %s: %s (run it again to resume)\n" % (args.command, e))
        return CUT
    except NameRefused as e:
        err.write("tvlink files %s: %s\n" % (args.command, e))
        return USAGE
    except OSError as e:
        err.write("tvlink files %s: %s\n" % (args.command, e))
        return LOCAL
    out.write(
        "%s %s: %d bytes, sha256 %s%s\n"
        % (
            "sent" if args.command == "put" else "fetched",
            result["name"],
            result["size"],
            result["sha256"],
            ", resumed at byte %d" % (result["resumed"],) if result["resumed"] else "",
        )
    )
    return OK


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)

    def start(reactor):
        d = Deferred.fromCoroutine(run(reactor, argv, sys.stdout, sys.stderr))
        return d.addCallback(lambda status: _exit(status))

    task.react(start)


def _exit(status):
    if status:
        raise SystemExit(status)
