"""Billing platform connectors: one module per platform, client + mapping to core."""
