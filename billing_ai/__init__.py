"""billing_ai: machine intelligence beside a metered billing platform.

The billing platform stays the system of record; this package pulls its data
into DuckDB, validates it and computes analytics on it. See README.md and docs/.
"""

__version__ = "0.1.0"
