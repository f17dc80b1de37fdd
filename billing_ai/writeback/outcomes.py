"""What a platform writer reports to the push loop, and the types both sides share.

Below both :mod:`billing_ai.actions` (the ledger and the push loop, which decide what is sent and record
what happened) and :mod:`billing_ai.platforms` (whose writers send it): neither imports the other for these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from billing_ai.writeback.kinds import AUDIT_POINTER_KEY, Proposal

T = TypeVar("T")


class Permanent(Exception):
    """The platform refused: resending the same request cannot succeed. ``status``: its HTTP status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Unknown(Exception):
    """The request may or may not have been applied."""


def none_if_missing(call: Callable[[], T]) -> T | None:
    """A read for a re-check or read-back: a missing object (404) is None."""
    try:
        return call()
    except Permanent as e:
        if e.status == 404:
            return None
        raise


@dataclass(frozen=True)
class Applied:
    platform_object: str | None
    response: dict = field(default_factory=dict)


def pointer(action_id: str, audit_seq: int) -> dict[str, str]:
    return {AUDIT_POINTER_KEY: f"{action_id}#{audit_seq}"}


@dataclass(frozen=True)
class Contact:
    """What a sink needs to know about a customer, read from the platform at push time (never stored)."""

    email: str | None
    email_opt_out: bool = False
    currency: str | None = None


class PlatformExecutor(Protocol):
    """One billing platform's write-back: what :class:`Executor` routes a proposal to by its ``platform``.

    ``precheck`` re-checks the platform's state (reasons to block, empty if fine); ``read_back`` finds a
    change an earlier attempt may have made (by the audit pointer it carries); ``apply`` sends it with the
    attempt's idempotency key. Raise :class:`Permanent` when the platform refuses, :class:`Unknown` when the
    outcome is unknown. Targets are canonical ids; mapping them to platform ids is the executor's job.
    """

    platform: str
    kinds: frozenset[str]  # the platform kinds this platform can carry out

    def precheck(self, p: Proposal) -> list[str]: ...

    def read_back(self, p: Proposal) -> Applied | None: ...

    def apply(self, p: Proposal, key: str, audit_seq: int) -> Applied: ...

    def contact(self, customer_id: str) -> Contact | None: ...

    def leave_pointer(self, customer_id: str, key: str, mark: dict[str, str]) -> None: ...
