"""
Tests for tvlink.payment.
"""
