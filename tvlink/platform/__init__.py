"""
The platform role: the reconnecting client factory, L{PlatformService},
balancing over several payment nodes, the circuit breaker, the bounded
queue, and the in-doubt journal.
"""

from tvlink.platform.service import PlatformService

__all__ = ["PlatformService"]
