"""
Helpers for testing applications that embed tvlink, as
L{twisted.internet.testing} serves Twisted's users: a fake payment node and
a fake platform joined in memory on a Clock (L{tvlink.testing.fakes}), and
a fault-injecting TCP proxy (L{tvlink.testing.faultproxy}, its modes in
L{tvlink.testing.modes}, its byte pipe in L{tvlink.testing.pipe}, its
control port and command line in L{tvlink.testing.control}).
"""
