"""The local backend: the steps as local processes with run records, and the baseline model registry."""
