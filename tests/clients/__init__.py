"""Black-box tests of the Python client (SDK, CLI, doctor) against the real services."""
