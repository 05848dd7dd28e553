"""
The C{tvlink} admin command. Today it only points at twistd; the ledger
commands live here as they arrive.
"""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv in ([], ["-h"], ["--help"]):
        print("usage: tvlink COMMAND ...\n\nRun the roles with: twistd -n tvlink payment|platform|sandbox --help")
        return 0
    print("tvlink: unknown command %r (try --help)" % (argv[0],), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
