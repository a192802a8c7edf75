"""Host-system adapters: pandas accessor, Arrow streams. Each is thin: host data to Arrow, the
column pipeline, Arrow back to the host."""
