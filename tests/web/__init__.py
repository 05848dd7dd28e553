"""
Tests for tvlink.web.
"""
