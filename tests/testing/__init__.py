"""
Tests for tvlink.testing.
"""
