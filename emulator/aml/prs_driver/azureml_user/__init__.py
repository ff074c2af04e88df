"""The emulated parallel-run runtime's user package (the real one is dropped into `driver/` by the service)."""
