"""
C{python -m tvlink}: the C{tvlink} admin command (L{tvlink.cli.main}).
"""

import sys

from tvlink.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
