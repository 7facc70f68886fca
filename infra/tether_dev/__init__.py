"""Local development and test tooling for Tether (embedded Postgres, runner, test driver)."""
