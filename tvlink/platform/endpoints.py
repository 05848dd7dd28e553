"""
The platform's payment endpoints as configured: C{"HOST:PORT"} strings,
comma-separated ones forming a priority group.
"""


def parseGroups(endpoints):
    """
    Parse endpoint configuration into priority groups: a list of
    C{"HOST:PORT"} strings, each of which may name several endpoints
    separated by commas (one group). Returns a list of groups, each a list
    of C{(host, port)}.
    """
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    groups = []
    for entry in endpoints:
        members = entry if isinstance(entry, (list, tuple)) else entry.split(",")
        group = [parseEndpoint(m.strip() if isinstance(m, str) else m) for m in members if m]
        if group:
            groups.append(group)
    if not groups:
        raise ValueError("at least one payment endpoint is needed")
    return groups


def parseEndpoint(text):
    """
    Parse C{"HOST:PORT"} into C{(host, port)}.

    @raise ValueError: naming what is wrong.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("endpoint %r is not HOST:PORT" % (text,))
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise ValueError("endpoint %r has no host" % (text,))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("endpoint %r has no valid port (1-65535)" % (text,))
    return host, int(port)
