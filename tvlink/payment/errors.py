"""
The payment ledger's errors, in one module: they are raised by the store
(L{tvlink.store.ledgersql}: no file, not a ledger), by the account rules
(L{tvlink.payment.accounts}: unknown card, duplicate account, bad amount)
and by the writer (L{tvlink.payment.ledger}: closed, still applying), and
caught by the admin command and by embedders, who need not know which.
"""

from tvlink.errors import TVLinkError

__all__ = [
    "BadAmount",
    "BadCardNumber",
    "DuplicateAccount",
    "LedgerClosed",
    "LedgerError",
    "LedgerNotFound",
    "NotALedger",
    "StillApplying",
    "UnknownAccount",
]


class LedgerError(TVLinkError):
    """
    The ledger could not do what was asked.
    """


class LedgerClosed(LedgerError):
    """
    The ledger is closed or closing; nothing was applied.
    """


class StillApplying(LedgerError):
    """
    A cancelled request that the writer had already started: it will be
    committed as it is (its outcome is then in the journal, see
    L{tvlink.payment.ledger.PaymentLedger.stateOf}); whether money moved is
    not known yet.
    """


class LedgerNotFound(LedgerError):
    """
    There is no ledger file at the path given.
    """


class NotALedger(LedgerError):
    """
    The file is not a tvlink ledger (not SQLite, or no ledger schema).
    """


class UnknownAccount(LedgerError):
    """
    No account has that card number.
    """


class DuplicateAccount(LedgerError):
    """
    An account with that card number is already open.
    """


class BadAmount(LedgerError, ValueError):
    """
    An amount or balance that is not a whole number of fen in range.
    """


class BadCardNumber(LedgerError, ValueError):
    """
    A card number that is not 12 to 19 decimal digits.
    """
