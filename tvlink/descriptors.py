"""
The process's file descriptor budget.

Every link, store, journal, log file and HTTP connection takes a
descriptor, and a process has C{RLIMIT_NOFILE} of them. A role starts by
raising its soft limit to the hard one (L{raiseLimit}), then reserves
descriptors for what it cannot do without (its links, their
reconnections, its stores and a margin for the rest) before it lets the
HTTP side have any: the HTTP connection cap is what is left
(L{DescriptorBudget.httpConnections}), so that however many clients come,
a link (re)connection never fails with C{EMFILE} because of them.
"""

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None

#: Descriptors kept for everything that is not a link or an HTTP
#: connection: the stores and their threads, log files, the listening
#: ports, DNS lookups, pipes of the reactor, TLS files, a file transfer.
BASE_RESERVE = 64

#: The limit assumed where there is none to read.
UNKNOWN_LIMIT = 1024

#: Never raise the soft limit above this (an unlimited hard limit does not
#: mean the kernel can hand out that many).
HIGHEST = 1 << 20


def currentLimit():
    """
    C{(soft, hard)} of C{RLIMIT_NOFILE}; C{(1024, 1024)} where it cannot
    be read.
    """
    if resource is None:
        return UNKNOWN_LIMIT, UNKNOWN_LIMIT
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raiseLimit():
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit (at most
    L{HIGHEST}).

    @return: C{(before, after)}, the soft limit before and after; the same
        when it could not be raised.
    """
    soft, hard = currentLimit()
    target = HIGHEST if hard == getattr(resource, "RLIM_INFINITY", -1) else min(hard, HIGHEST)
    if resource is None or soft == getattr(resource, "RLIM_INFINITY", -1) or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, target


class DescriptorBudget:
    """
    How a process's descriptors are shared out.

    @param limit: the soft C{RLIMIT_NOFILE}.
    @param links: descriptors the role's links may hold at once (a
        platform's links, doubled for reconnections that overlap; a payment
        node's C{--max-links}).
    @param reserve: descriptors kept for the rest (L{BASE_RESERVE}).
    """

    def __init__(self, limit, links=0, reserve=BASE_RESERVE):
        self.limit = int(limit)
        self.links = int(links)
        self.reserve = int(reserve)

    @classmethod
    def measure(cls, links=0):
        """
        The budget under the process's current soft limit.
        """
        return cls(currentLimit()[0], links)

    @property
    def reserved(self):
        return self.links + self.reserve

    def httpConnections(self):
        """
        The default HTTP connection cap: three quarters of what the links
        and the reserve leave (the rest is slack for connections being
        accepted and closed), at least 1.
        """
        left = self.limit - self.reserved
        return max(1, left - left // 4)

    def describe(self):
        return "%d descriptors: %d kept for links, %d for stores and the rest" % (
            self.limit, self.links, self.reserve
        )
