"""The embedded default platform: a synthetic world and local API emulators.

Never imported by ``billing_ai.rating`` (and vice versa): the sandbox bills
with its own code so that our re-rating is an independent check.
"""
