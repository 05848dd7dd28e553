"""
The resource trees the web side serves: a platform's (terminal API under
C{/v1}, status page, C{/status.json}, C{/metrics}), a payment node's
(status and metrics), and the sandbox's, both roles on one site.
"""

from tvlink.web.metrics import MetricsResource, registryFor
from tvlink.web.resources import V1Resource
from tvlink.web.responses import JSONResource, NotFound
from tvlink.web.status import StatusJSON, StatusPage, StatusSource
from tvlink.web.terminal import TerminalAPI


class _Root(JSONResource):
    """
    The root of a site: its children, and a JSON 404 for anything else.
    """

    def getChild(self, name, request):
        return NotFound("no such page: try / (status), /status.json, /metrics or /v1")

    def render_GET(self, request):
        # Reached only as C{/prefix} without its slash (the sandbox's
        # C{/payment}): the pages' relative links need it.
        request.redirect(request.path + b"/")
        return b""


class _NoContent(JSONResource):
    isLeaf = True

    def render_GET(self, request):
        request.setResponseCode(204)
        return b""


def _statusTree(root, source, registry, collector):
    root.putChild(b"", StatusPage(source))
    root.putChild(b"favicon.ico", _NoContent())
    root.putChild(b"status.json", StatusJSON(source))
    root.putChild(b"metrics", MetricsResource(registry, collector))
    return root


def platformResource(service, api=None, link_wait=None, links=()):
    """
    The resource tree of platform C{service}: the terminal API under
    C{/v1}, the status page, C{/status.json} and C{/metrics}.

    @return: C{(resource, api)}.
    """
    if api is None:
        api = TerminalAPI(service, link_wait=link_wait)
    registry, collector = registryFor(service, api)
    root = _Root()
    root.putChild(b"v1", V1Resource(api))
    _statusTree(root, StatusSource(service, api, links=links), registry, collector)
    root.registry = registry
    return root, api


def paymentResource(service, links=()):
    """
    The resource tree of payment C{service}: the status page,
    C{/status.json} and C{/metrics}.
    """
    registry, collector = registryFor(service)
    root = _Root()
    _statusTree(root, StatusSource(service, links=links), registry, collector)
    root.registry = registry
    return root


def sandboxResource(payment, api, platform):
    """
    The sandbox's tree before its platform exists: the terminal C{api}
    under C{/v1} and the status page of C{platform()} (C{None} while it
    is starting) at C{/}, the payment side's tree under C{/payment/}.
    Grafting a L{platformResource} onto it completes it.
    """
    root = _Root()
    root.putChild(b"favicon.ico", _NoContent())
    root.putChild(b"payment", paymentResource(payment, links=[("../", "platform")]))
    root.putChild(b"", StatusPage(StatusSource(platform)))
    root.putChild(b"v1", V1Resource(api))
    return root
