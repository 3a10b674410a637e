"""The running service: its loops, shared state, metrics, HTTP endpoints and lifecycle."""
