"""
Tests for tvlink.cli.
"""
