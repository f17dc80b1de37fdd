"""Evaluation against the sandbox generator's ground truth.

Only tests and assets in the ``evaluation`` group read the truth folder; the
production graph never does.
"""
