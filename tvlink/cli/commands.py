"""
What the C{tvlink} admin commands on a database file (C{tvlink ledger},
C{tvlink journal}) parse their arguments with.
"""

import argparse
import sys


class CommandParser(argparse.ArgumentParser):
    """
    argparse, but reporting to our own stream.
    """

    out = None
    err = None

    def _print_message(self, message, file=None):
        if not message:
            return
        if file is None or file is sys.stdout:
            (self.out or sys.stdout).write(message)
        else:
            (self.err or sys.stderr).write(message)


def databaseParser(prog, description, what, writer, out, err):
    """
    The parser of an admin command on one SQLite file: C{--db PATH},
    C{--busy-timeout S} and a required subcommand.

    @param what: the file, as in C{"the ledger file"}.
    @param writer: the process that may hold the file, as in C{"payment"}.
    @return: C{(parser, command)}, C{command(name, help)} adding a
        subcommand parser and returning it.
    """
    parser = CommandParser(prog=prog, description=description)
    parser.out, parser.err = out, err
    parser.add_argument("--db", required=True, metavar="PATH", help="%s (PATH or sqlite:PATH)" % (what,))
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a running %s process's commit (default 10)" % (writer,),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name, help):
        sub = commands.add_parser(name, help=help, description=help)
        sub.out, sub.err = out, err
        return sub

    return parser, command
