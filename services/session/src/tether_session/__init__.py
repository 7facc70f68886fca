"""Tether session service."""
