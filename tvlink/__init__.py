"""
tvlink: the JR/T 0109.4-2015 communication layer between a Smart TV
integrated broadcast-control platform and a payment and account-management
system, on Twisted.
"""

from tvlink.errors import (
    DuplicateKey,
    LinkLost,
    LinkNotReady,
    NoLinkAvailable,
    ProtocolViolation,
    RequestError,
    RequestTimeout,
    TVLinkError,
)
from tvlink.link.interfaces import IMessageHandler
from tvlink.payment.service import PaymentService
from tvlink.platform.service import PlatformService

__version__ = "0.1.0"

__all__ = [
    "DuplicateKey",
    "IMessageHandler",
    "LinkLost",
    "LinkNotReady",
    "NoLinkAvailable",
    "PaymentService",
    "PlatformService",
    "ProtocolViolation",
    "RequestError",
    "RequestTimeout",
    "TVLinkError",
]
