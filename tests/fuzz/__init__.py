"""Fuzzing the live services with schemathesis."""
