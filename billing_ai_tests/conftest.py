"""Shared pytest fixtures for the billing_ai test suite.

Fixtures here are meant to be reused across test modules; keep each one
small, documented, and cheap. Add new fixtures in their own section below.

World fixtures
    ``tiny_world``      (session)   a small deterministic synthetic world on disk
    ``tiny_warehouse``  (run)       every asset of it materialized, built once and shared by all workers

Sandbox fixtures
    ``sandbox``     (function)  a running Stripe emulator over ``tiny_world``
                                with a fresh, empty state directory
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from billing_ai.sandbox.generator import World, generate_world, write_world
from billing_ai.sandbox.server import SandboxServer
from billing_ai.sandbox.world import WorldConfig, WorldPaths

# ---------------------------------------------------------------------------
# The quick lane (make test-quick): everything but what is marked slow
# ---------------------------------------------------------------------------

#: Fixtures that materialize a whole world's warehouse, start an emulator or build the wheel: a test that
#: uses one (directly or through another fixture) is slow. Tests slow for other reasons carry the mark.
SLOW_FIXTURES = frozenset(
    {
        "tiny_warehouse",
        "sandbox",
        "server",
        "zsandbox",
        "mixed_warehouse",
        "twin_warehouses",
        "recurly_warehouse",
        "zuora_warehouse",
        "error_world",
        "wheel",
    }
)
SLOW_MODULES = frozenset({"test_benches", "test_concurrency", "test_crash_safety"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------------------
# World fixtures
# ---------------------------------------------------------------------------

#: The tiny world's config. Deterministic: the same seed always writes the same
#: tables, so tests may assert exact counts and amounts derived from it
#: (12 customers, 5 products, 45 prices, 3 meters, 12 subscriptions, ...).
TINY_WORLD_CONFIG = WorldConfig(seed=11, customers=12, days=45)


@dataclass(frozen=True)
class GeneratedWorld:
    """A world generated and written to disk for tests.

    ``world.tables`` holds the platform-neutral tables the sandbox serves,
    ``world.truth`` the ground truth; ``paths.world_dir`` is what
    ``SandboxServer`` and the ingestion code read, ``paths.inbox_dir`` holds
    the usage event files.
    """

    config: WorldConfig
    world: World
    paths: WorldPaths


def write_test_world(root: Path, config: WorldConfig = TINY_WORLD_CONFIG) -> GeneratedWorld:
    """Generate ``config``'s world and write it under ``root`` (``world/`` and ``inbox/``). The same config
    with other ``platforms`` weights is the same world with its customers on other platforms."""
    paths = WorldPaths(world_dir=Path(root) / "world", inbox_dir=Path(root) / "inbox")
    world = generate_world(config)
    write_world(world, paths)
    return GeneratedWorld(config=config, world=world, paths=paths)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> GeneratedWorld:
    """A small world (seed 11, 12 customers, 45 days), generated once per session.

    Takes well under a second. Treat it as read-only: tests that write state
    should do so through a ``sandbox`` (whose state lives in its own dir).
    """
    return write_test_world(tmp_path_factory.mktemp("tiny_world"))


# ---------------------------------------------------------------------------
# Sandbox fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
def sandbox(tiny_world: GeneratedWorld, tmp_path: Path) -> Iterator[SandboxServer]:
    """A running Stripe sandbox over ``tiny_world`` with fresh state.

    Each test gets its own SQLite state dir (``tmp_path / "sandbox_state"``,
    also reachable as ``sandbox.store.path.parent``), so writes never leak
    between tests. Point the SDK at it with
    ``stripe.StripeClient("sk_test_sandbox", base_addresses={"api": sandbox.url})``.
    """
    with SandboxServer(tiny_world.paths.world_dir, tmp_path / "sandbox_state") as server:
        yield server


# ---------------------------------------------------------------------------
# Warehouse fixtures
# ---------------------------------------------------------------------------

TEST_PII_KEY = "test-pii-key"


def pipeline_resources(
    url: str,
    warehouse_path: Path,
    world: GeneratedWorld,
    page_size: int = 100,
    api_key: str = "rk_test_sandbox_readonly",
) -> dict:
    """Resources for running the graph against a sandbox at ``url`` (a read-only key: ingestion never writes)."""
    from billing_ai.actions.resources import ActionsResource
    from billing_ai.platforms.chargebee.resource import ChargebeeResource
    from billing_ai.platforms.recurly.resource import RecurlyResource
    from billing_ai.platforms.stripe.resource import StripeResource
    from billing_ai.platforms.zuora.resource import ZuoraResource
    from billing_ai.resources import PipelineSettings, WarehouseResource
    from billing_ai.sandbox.chargebee_api import DEFAULT_READONLY_KEY as CHARGEBEE_READONLY_KEY
    from billing_ai.sandbox.recurly_api import READONLY_API_KEY as RECURLY_READONLY_KEY
    from billing_ai.sandbox.zuora_api import ZUORA_READONLY_CLIENT_ID, ZUORA_READONLY_CLIENT_SECRET

    ops = Path(warehouse_path).parent / "ops"
    return {
        "actions": ActionsResource(ledger_path=str(ops / "actions.sqlite"), heads_file=str(ops / "audit_heads.jsonl")),
        "warehouse": WarehouseResource(path=str(warehouse_path)),
        "stripe": StripeResource(api_key=api_key, api_base=url, requests_per_second=500, page_size=page_size),
        "zuora": ZuoraResource(
            api_base=f"{url}/zuora",
            client_id=ZUORA_READONLY_CLIENT_ID,
            client_secret=ZUORA_READONLY_CLIENT_SECRET,
            requests_per_second=500,
            page_size=page_size,
        ),
        "recurly": RecurlyResource(
            api_key=RECURLY_READONLY_KEY, api_base=f"{url}/recurly", requests_per_second=500, page_size=page_size
        ),
        "chargebee": ChargebeeResource(
            api_base=f"{url}/chargebee", api_key=CHARGEBEE_READONLY_KEY, requests_per_second=500, page_size=page_size
        ),
        "settings": PipelineSettings(
            as_of=world.config.as_of, inbox_dir=str(world.paths.inbox_dir), pii_key=TEST_PII_KEY
        ),
    }


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder ``build`` fills once per test run, shared by every pytest-xdist worker: the first worker to
    need it builds it under a file lock, the others wait and reuse it. Without xdist, once per session."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # each worker's base temp is a folder of the run's
    root, done = base / name, base / f"{name}.built"
    # a build that hangs fails every waiting worker after half an hour instead of hanging the run; a build
    # that fails leaves no marker, so the next worker that needs it tries again (and fails the same way)
    with FileLock(str(base / f"{name}.lock"), timeout=1800):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            build(root)
            done.touch()
    return root


@pytest.fixture(scope="session")
def tiny_warehouse(tiny_world: GeneratedWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse with every asset of ``tiny_world`` materialized (small pages, so the SDK pages a lot),
    built once per test run and shared by every worker (the world is deterministic: each worker's
    ``tiny_world`` is the same world). Its action ledger is ``ops/`` beside it.

    Read-only for tests: copy the file (``shutil.copy``) before changing anything.
    """

    def build(root: Path) -> None:
        from billing_ai.runner import materialize_all

        with SandboxServer(tiny_world.paths.world_dir, root / "state") as server:
            res = pipeline_resources(server.url, root / "warehouse.duckdb", tiny_world, page_size=7)
            materialize_all(tiny_world.config, resources=res, say=lambda m: None)

    return built_once(tmp_path_factory, "tiny_warehouse", build) / "warehouse.duckdb"


# ---------------------------------------------------------------------------
# Hand-built warehouses
# ---------------------------------------------------------------------------

#: core.prices and core.price_tiers as the Stripe mapping creates them, for tests that build
#: price tables by hand in an in-memory DuckDB.
CORE_PRICES_DDL = """
CREATE SCHEMA core;
CREATE TABLE core.prices (
    price_id VARCHAR, platform VARCHAR, product_id VARCHAR, plan VARCHAR, component VARCHAR,
    currency VARCHAR, usage_type VARCHAR, billing_scheme VARCHAR, tiers_mode VARCHAR,
    unit_amount_decimal DECIMAL(38, 12), package_size BIGINT, package_rounding VARCHAR,
    meter_id VARCHAR, meter_name VARCHAR, billing_interval VARCHAR, billing_interval_count INTEGER,
    lookup_key VARCHAR, active BOOLEAN, created_at TIMESTAMPTZ);
CREATE TABLE core.price_tiers (
    price_id VARCHAR, platform VARCHAR, tier_index INTEGER, up_to DECIMAL(38, 9),
    unit_amount_decimal DECIMAL(38, 12), flat_amount BIGINT);
"""


# ---------------------------------------------------------------------------
# ASGI apps (the webhook receiver) in-process
# ---------------------------------------------------------------------------


class ASGIClient:
    """Requests to an ASGI app in this process, through httpx's own ASGI transport (what
    ``starlette.testclient`` does, without the httpx version it now asks for)."""

    def __init__(self, app, base_url: str = "http://testserver"):
        self.app, self.base_url = app, base_url

    def request(self, method: str, url: str, **kwargs):
        import asyncio

        import httpx

        async def send():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs):
        return self.request("POST", url, **kwargs)


# ---------------------------------------------------------------------------
# Proposals for write-back tests
# ---------------------------------------------------------------------------


def make_proposal(
    kind: str,
    target_type: str,
    target_id: str,
    params: dict,
    now,
    *,
    platform: str = "stripe",
    rationale: str = "because",
    proposer: str = "analytics:test",
):
    """A proposal as an analytic would make it (its id derives from kind, params and target), valid 3 days."""
    import json
    from datetime import timedelta

    from billing_ai.writeback.kinds import Proposal, action_id

    return Proposal(
        action_id=action_id(proposer, kind, json.dumps(params, sort_keys=True) + target_id),
        kind=kind,
        platform=platform,
        target_type=target_type,
        target_id=target_id,
        params=params,
        rationale=rationale,
        confidence=0.9,
        proposer=proposer,
        created_at=now,
        expires_at=now + timedelta(days=3),
    )


def propose_and_approve(ledger, proposal, policy, now, approvers=("ana", "ben")) -> str:
    """Propose, then approve by as many of ``approvers`` as the policy asks for (one, or two distinct people)."""
    ledger.propose([proposal], policy, now)
    for who in approvers:
        if ledger.get(proposal.action_id)["status"] not in ("proposed", "partially_approved"):
            break
        ledger.decide(proposal.action_id, who, "approve", "ok", "cli", policy, now)
    return proposal.action_id
