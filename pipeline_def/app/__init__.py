"""The Functions layer: HTTP request parsing and the one error-to-status mapping, and the timer tick."""
