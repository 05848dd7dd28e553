"""
What both roles share: the wire format (L{tvlink.link.wire}), the
idle-timeout mixin (L{tvlink.link.idle}), the link protocol and its
factory, the table of pending requests, limits, TLS and the service base
both roles' services build on.
"""
