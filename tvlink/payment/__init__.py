"""
The payment role: the server factory, L{PaymentService} and
L{LedgerPaymentService} (L{tvlink.payment.service}), the durable ledger's
writer (L{tvlink.payment.ledger}), its rules (L{tvlink.payment.rules},
L{tvlink.payment.accounts}) and errors (L{tvlink.payment.errors}), and the
back-end hop in front of it (L{tvlink.payment.backend}).
"""

from tvlink.payment.service import PaymentService

__all__ = ["PaymentService"]
