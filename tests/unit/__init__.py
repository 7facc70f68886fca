"""In-process unit tests: pure code and contract files, no processes, no sockets."""
