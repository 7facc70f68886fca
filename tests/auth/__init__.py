"""Black-box tests of the auth-token service (real subprocess, real Postgres)."""
