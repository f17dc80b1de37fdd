"""Ingestion: platform objects and usage files into raw.* and core.*."""
