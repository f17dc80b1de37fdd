"""Analyst-facing marts built from the core model."""
