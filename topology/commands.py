"""CLI commands (``spillway <command>``): replay, buffer, send, check-config."""
