"""
The platform role: L{PlatformService} (C{service}), one reconnecting
client factory per link slot (C{factory}) with its circuit breaker
(C{breaker}), the configured endpoints (C{endpoints}), balancing and the
bounded queue (C{pool}), and money-moving requests through the in-doubt
journal (C{settlement}, C{journal}).
"""

from tvlink.platform.service import PlatformService

__all__ = ["PlatformService"]
