"""
C{tvlink keys}: the terminals' API keys (L{tvlink.web.keys}).

    tvlink keys --file PATH add TERMINAL-ID
    tvlink keys --file PATH list
    tvlink keys --file PATH revoke TERMINAL-ID

C{add} makes a key for a terminal and prints it once, on standard output
and nowhere else: the file keeps only its digest, so a key that is lost is
revoked and made anew. The file is written whole, mode 600, and created by
the first C{add}. A running platform reads it again on C{SIGHUP}. Exit
status: 0 done, 1 refused (no such terminal, one with a key already, a
file that cannot be read or written), 2 bad arguments.
"""


from tvlink.cli.commands import CommandParser, parseArguments, streams
from tvlink.web.keys import KeyFile, KeyFileError

#: Exit statuses.
OK = 0
REFUSED = 1
USAGE = 2


def _parser(out, err):
    parser = CommandParser(
        prog="tvlink keys", description="Make, list and revoke the terminals' API keys.", out=out, err=err
    )
    parser.add_argument("--file", required=True, metavar="PATH", help="the key file (created by the first add)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, help in (
        ("add", "make a key for a terminal and print it (once: only its digest is kept)"),
        ("revoke", "remove a terminal's key (a running platform drops it on SIGHUP)"),
        ("list", "list the terminals that have a key, with when it was made"),
    ):
        sub = commands.add_parser(name, help=help, description=help, out=out, err=err)
        if name != "list":
            sub.add_argument("terminal", metavar="TERMINAL-ID")
    return parser


def main(argv=None, out=None, err=None):
    """
    Run C{tvlink keys ARGV...}; return the exit status.
    """
    out, err = streams(out, err)
    args, status = parseArguments(_parser(out, err), argv, USAGE)
    if args is None:
        return status
    try:
        keys = KeyFile.load(args.file, missing_ok=args.command == "add")
        if args.command == "list":
            for terminal in sorted(keys.entries):
                out.write("%s  key made %s\n" % (terminal, keys.entries[terminal][1]))
            out.write("%d terminals have a key in %s\n" % (len(keys.entries), args.file))
            return OK
        if args.command == "add":
            key = keys.add(args.terminal)
            keys.write()
            out.write("%s\n" % (key,))
            err.write(
                "key of terminal %s made; it is shown this once (%s keeps only its digest). "
                "Send it as 'Authorization: Bearer KEY'; reload a running platform with SIGHUP.\n"
                % (args.terminal, args.file)
            )
            return OK
        keys.revoke(args.terminal)
        keys.write()
        out.write("key of terminal %s revoked; send SIGHUP to a running platform to drop it now\n" % (args.terminal,))
        return OK
    except KeyFileError as e:
        err.write("tvlink keys: %s\n" % (e,))
        return REFUSED
