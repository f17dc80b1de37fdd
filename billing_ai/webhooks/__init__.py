"""Signed webhooks from the billing platforms: verification, a durable inbox, and the sensor that reads it."""
