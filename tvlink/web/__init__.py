"""
tvlink on the web: the platform's terminal API, the status page of both
roles, and their Prometheus metrics, served by twisted.web.

    - L{platformResource} / L{paymentResource} (C{tree}): the resource
      tree of one service (C{/}, C{/status.json}, C{/metrics}, and
      C{/v1/...} on a platform).
    - L{HTTPService} (C{service}): serves a tree on a server endpoint;
      stops gracefully (the port closes first, calls in progress finish,
      then the connections close).
    - L{ServiceStack} (C{service}): a L{MultiService} whose children stop
      one after the other, the last added first, so the web side stops
      taking work before the service behind it drains.

The modules: C{terminal} (the terminal API's logic), C{validation} (its
input checks and answers), C{resources} (its twisted.web resources),
C{status} (the status page), C{metrics} and C{counting} (Prometheus),
C{responses} (JSON answers), C{tree}, and C{service} (also the sandbox's
site, L{tvlink.web.service.SandboxWeb}).
"""

from tvlink.web.service import HTTPService, ServiceStack
from tvlink.web.tree import paymentResource, platformResource

__all__ = [
    "HTTPService",
    "ServiceStack",
    "paymentResource",
    "platformResource",
]
