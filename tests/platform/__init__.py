"""
Tests for tvlink.platform.
"""
