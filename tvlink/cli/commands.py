"""
What the C{tvlink} admin commands on a database file (C{tvlink ledger},
C{tvlink journal}) parse their arguments with.
"""

import argparse
import sys


class CommandParser(argparse.ArgumentParser):
    """
    argparse, but writing its help to C{out} and its usage errors to C{err}
    (our own streams, so that a test or an embedding caller sees them).
    """

    out = None
    err = None

    def __init__(self, *args, out=None, err=None, **kwargs):
        argparse.ArgumentParser.__init__(self, *args, **kwargs)
        self.out, self.err = out, err

    def print_usage(self, file=None):
        argparse.ArgumentParser.print_usage(self, self._stream(file))

    def print_help(self, file=None):
        argparse.ArgumentParser.print_help(self, self._stream(file))

    def exit(self, status=0, message=None):
        if message:
            (self.err or sys.stderr).write(message)
        sys.exit(status)

    def error(self, message):
        self.print_usage(self.err or sys.stderr)
        self.exit(2, "%s: error: %s\n" % (self.prog, message))

    def _stream(self, file):
        if file is None or file is sys.stdout:
            return self.out or sys.stdout
        return file


def databaseParser(prog, description, what, writer, out, err):
    """
    The parser of an admin command on one SQLite file: C{--db PATH},
    C{--busy-timeout S} and a required subcommand.

    @param what: the file, as in C{"the ledger file"}.
    @param writer: the process that may hold the file, as in C{"payment"}.
    @return: C{(parser, command)}, C{command(name, help)} adding a
        subcommand parser and returning it.
    """
    parser = CommandParser(prog=prog, description=description, out=out, err=err)
    parser.add_argument(
        "--db",
        required=True,
        metavar="PATH|URL",
        help="%s (PATH, sqlite:PATH, or postgresql://USER@HOST:PORT/DB)" % (what,),
    )
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a running %s process's commit, or to connect to PostgreSQL (default 10)"
        % (writer,),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name, help):
        return commands.add_parser(name, help=help, description=help, out=out, err=err)

    return parser, command


def parseCommand(name, parser, argv, err, usage):
    """
    Parse C{argv} with C{parser} (from L{databaseParser}) and check the
    options every such command shares.

    @param name: the command, as in C{"ledger"}, for the messages.
    @param usage: the exit status of a usage error.
    @return: C{(args, None)}, or C{(None, status)} when the command must
        exit with C{status} (help given, or a usage error reported on
        C{err}).
    """
    args, status = parseArguments(parser, argv, usage)
    if args is None:
        return None, status
    if args.busy_timeout <= 0:
        err.write("tvlink %s: --busy-timeout must be positive\n" % (name,))
        return None, usage
    limit = getattr(args, "limit", None)
    if limit is not None and limit < 1:
        err.write("tvlink %s: --limit must be at least 1, not %d\n" % (name, limit))
        return None, usage
    return args, None


def streams(out, err):
    """
    C{(out, err)}: those given, or standard output and standard error.
    """
    return (sys.stdout if out is None else out), (sys.stderr if err is None else err)


def parseArguments(parser, argv, usage):
    """
    Parse C{argv} (the command line's arguments when C{None}) with
    C{parser}.

    @return: C{(args, None)}, or C{(None, status)} when the command must
        exit with C{status} (help given, or a usage error reported: then
        C{usage}).
    """
    try:
        return parser.parse_args(sys.argv[1:] if argv is None else list(argv)), None
    except SystemExit as e:
        return None, (e.code if isinstance(e.code, int) else usage)
