"""Tether auth-token service."""
