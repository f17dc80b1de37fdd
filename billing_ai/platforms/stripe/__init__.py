"""Stripe Billing: the official SDK client and the mapping to core tables."""
