"""
Helpers for testing applications that embed tvlink, as
L{twisted.internet.testing} serves Twisted's users: a fault-injecting TCP
proxy (L{tvlink.testing.faultproxy}).
"""
