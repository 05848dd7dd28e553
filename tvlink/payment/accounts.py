"""
The ledger's accounts and what an operator reads of it: opening,
freezing and showing accounts, the journal's recent entries, and the
reconciliation of every balance against the journal.

Like L{tvlink.payment.rules}, these run inside their caller's
transaction on a L{tvlink.store.ledgersql.LedgerStore}, and are shared by
the ledger's writer thread (L{tvlink.payment.ledger.PaymentLedger}) and
the admin command (L{tvlink.cli.ledger}).
"""

from tvlink.link import wire
from tvlink.masking import maskCard as maskPan
from tvlink.payment.errors import BadAmount, BadCardNumber, DuplicateAccount, UnknownAccount
from tvlink.payment.rules import ACTIVE, APPROVED, FROZEN, PURCHASE, REFUNDED, normalKey

#: Largest amount or opening balance: the wire's 12 digits of fen.
MAX_AMOUNT = wire.MAX_AMOUNT


def checkPan(pan):
    """
    C{pan} if it is 12 to 19 decimal digits, else L{BadCardNumber}.
    """
    if not (isinstance(pan, str) and pan.isascii() and pan.isdigit()):
        raise BadCardNumber("card number must be 12 to 19 decimal digits, not a value with other characters")
    if not 12 <= len(pan) <= 19:
        raise BadCardNumber("card number must be 12 to 19 decimal digits, not %d" % (len(pan),))
    return pan


def checkBalance(balance):
    """
    C{balance} in fen as an C{int}, from an C{int} or a string of digits.

    @raise BadAmount: if it is not a whole number from 0 to 999999999999.
    """
    if isinstance(balance, str):
        if not (balance.isascii() and balance.isdigit()):
            raise BadAmount("amount must be a whole number of fen (e.g. 100000 for 1000.00), not %r" % (balance,))
        balance = int(balance)
    if type(balance) is not int or not 0 <= balance <= MAX_AMOUNT:
        raise BadAmount("amount must be a whole number of fen from 0 to %d, not %r" % (MAX_AMOUNT, balance))
    return balance


def formatFen(fen):
    """
    C{123456} -> C{"1234.56"}.
    """
    sign = "-" if fen < 0 else ""
    return "%s%d.%02d" % (sign, abs(fen) // 100, abs(fen) % 100)


def openAccount(store, pan, balance, now):
    """
    Open an active account with an opening balance in fen.

    @raise BadCardNumber, BadAmount, DuplicateAccount: as they say.
    """
    pan = checkPan(pan)
    balance = checkBalance(balance)
    if not store.insertAccount(pan, balance, ACTIVE, now):
        raise DuplicateAccount("an account for card %s is already open" % (maskPan(pan),))
    return getAccount(store, pan)


def getAccount(store, pan):
    """
    The account of C{pan} as a C{dict}.

    @raise UnknownAccount: if there is none.
    """
    account = store.account(pan)
    if account is None:
        raise UnknownAccount("no account for card %s" % (maskPan(pan),))
    return account


def listAccounts(store):
    """
    Every account, as C{dict}s ordered by card number.
    """
    return store.accounts()


def setStatus(store, pan, status):
    """
    Freeze or unfreeze an account.

    @return: the status it had before.
    @raise UnknownAccount: if there is none.
    """
    if status not in (ACTIVE, FROZEN):
        raise ValueError("status must be %r or %r, not %r" % (ACTIVE, FROZEN, status))
    before = getAccount(store, pan)["status"]
    store.setStatus(pan, status)
    return before


def journalEntry(store, key):
    """
    The journal entry under C{key} (sender, stan, time) as a C{dict}, or
    C{None}.
    """
    return store.entry(normalKey(key))


def recentJournal(store, limit=20):
    """
    The last C{limit} journal entries, newest first.
    """
    return store.recent(limit)


def reconcile(store):
    """
    Check every account: opening balance - approved and unreversed
    purchases + unreversed refunds = balance.

    @return: a C{dict}: C{accounts} (each with C{opening}, C{purchased},
        C{refunded}, C{balance}, C{expected}), C{mismatches} (their card
        numbers) and the totals.
    """
    purchased = store.purchasedByCard(PURCHASE, (APPROVED, REFUNDED))
    refunded = store.refundedByCard(APPROVED)
    accounts = []
    mismatches = []
    totals = {"opening": 0, "purchased": 0, "refunded": 0, "balance": 0}
    for account in listAccounts(store):
        pan = account["pan"]
        entry = {
            "pan": pan,
            "opening": account["opening"],
            "purchased": purchased.get(pan) or 0,
            "refunded": refunded.get(pan) or 0,
            "balance": account["balance"],
        }
        entry["expected"] = entry["opening"] - entry["purchased"] + entry["refunded"]
        if entry["expected"] != entry["balance"]:
            mismatches.append(pan)
        for name in totals:
            totals[name] += entry[name]
        accounts.append(entry)
    return {"accounts": accounts, "mismatches": mismatches, "totals": totals}
