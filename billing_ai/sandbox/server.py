"""Start and stop the sandbox platforms on loopback.

``SandboxServer`` runs uvicorn in a background thread (tests, ``billing-ai
run``); ``serve`` runs it in the foreground (``billing-ai sandbox serve``).
The bind address is always loopback: the sandbox is never exposed.

One server, one port, every platform: Stripe at the root (its SDK takes a
base address, not a path), each other platform's facade under ``/<platform>``
(``FACADES``), the sinks under ``/sinks``. All serve the same world, each only
the customers the world assigns to it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from billing_ai.sandbox.stripe_api import SandboxSettings, create_app, open_store

LOOPBACK = "127.0.0.1"

# platform -> "module:function" building its facade: function(world_dir, state_dir) -> an object with
# ``app`` (ASGI), ``settings`` (``faults``, ``rate_limit_per_second``...) and ``close()``
FACADES: dict[str, str] = {
    "zuora": "billing_ai.sandbox.zuora_api:create_zuora_facade",
    "recurly": "billing_ai.sandbox.recurly_api:create_recurly_facade",
    "chargebee": "billing_ai.sandbox.chargebee_api:create_chargebee_facade",
}


def _load_facades(world_dir: Path, state_dir: Path) -> dict:
    import importlib

    out = {}
    for name, target in FACADES.items():
        module, fn = target.split(":")
        out[name] = getattr(importlib.import_module(module), fn)(Path(world_dir), Path(state_dir))
    return out


def _root_app(stripe_app, facades: dict) -> Starlette:
    return Starlette(routes=[*(Mount(f"/{n}", app=f.app) for n, f in facades.items()), Mount("", app=stripe_app)])


class SandboxServer:
    """Context manager: ``with SandboxServer(world_dir, state_dir) as s: s.url``."""

    def __init__(self, world_dir: Path, state_dir: Path, port: int = 0, settings: SandboxSettings | None = None):
        self.store = open_store(state_dir, world_dir)
        self.settings = settings or SandboxSettings()
        self.facades = _load_facades(world_dir, state_dir)
        self.app = _root_app(create_app(self.store, self.settings), self.facades)
        self.config = uvicorn.Config(
            self.app, host=LOOPBACK, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="stripe-sandbox", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> SandboxServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.store.close()
        for f in self.facades.values():
            f.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(world_dir: Path, state_dir: Path, port: int, rate_limit: float | None = None) -> None:
    settings = SandboxSettings()
    if rate_limit:
        settings.rate_limit_per_second = rate_limit
    store = open_store(state_dir, world_dir)
    app = _root_app(create_app(store, settings), _load_facades(world_dir, state_dir))
    uvicorn.run(app, host=LOOPBACK, port=port, log_level="info", access_log=False, lifespan="off")
