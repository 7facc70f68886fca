"""Tether test suites (a package so that ``tests.support`` imports from every suite)."""
