"""
Tests for tvlink.link.
"""
