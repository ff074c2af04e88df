"""Fixtures (fakes): filled in by its owner."""
