"""
The payment role: the server factory, L{PaymentService}, the durable
ledger and the back-end hop in front of it.
"""

from tvlink.payment.service import PaymentService

__all__ = ["PaymentService"]
