"""
The C{tvlink} admin command (console script C{tvlink}, or
C{python -m tvlink}). The roles themselves run under twistd.
"""

import sys

USAGE = """\
usage: tvlink COMMAND ...

commands:
  ledger    look after the payment side's SQLite ledger
            (tvlink ledger --db PATH open|show|list|freeze|unfreeze|journal|check|init ...;
            tvlink ledger --help for more)
  journal   look after the platform's SQLite journal
            (tvlink journal --db PATH list|rekey ...; tvlink journal --help for more)
  keys      make, list and revoke the terminals' API keys
            (tvlink keys --file PATH add|list|revoke ...; tvlink keys --help for more)
  files     list, fetch and send files to a payment node's file service
            (tvlink files put|get|list --connect HOST:PORT --sender ID ...)
  reconcile check a reconciliation file against the platform's journal
            (tvlink reconcile --journal PATH --file PATH [--csv|--json PATH])

Run the roles with: twistd -n tvlink payment|platform|sandbox --help
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in ([], ["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    if argv[0] == "ledger":
        from tvlink.cli.ledger import main as ledger

        return ledger(argv[1:])
    if argv[0] == "journal":
        from tvlink.cli.journal import main as journal

        return journal(argv[1:])
    if argv[0] == "keys":
        from tvlink.cli.keys import main as keys

        return keys(argv[1:])
    if argv[0] == "files":
        from tvlink.cli.files import main as files

        return files(argv[1:])
    if argv[0] == "reconcile":
        from tvlink.cli.reconcile import main as reconcile

        return reconcile(argv[1:])
    sys.stderr.write("tvlink: unknown command %r (try --help)\n" % (argv[0],))
    return 2


if __name__ == "__main__":
    sys.exit(main())
