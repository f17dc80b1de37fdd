"""The sandbox's stand-ins for the non-platform sinks: a chat webhook and a case tool.

* ``POST /sinks/chat/<anything>``: a Slack-compatible incoming webhook (the URL
  is the secret, as with Slack). Takes ``{"text": ..., "blocks": [...]}`` and
  answers ``ok``; a body without ``text`` gets Slack's ``400 no_text``.
* ``POST /sinks/cases``: a support-case endpoint. Takes a JSON case with an
  ``external_id``; the same ``external_id`` again returns the existing case
  (``200``) instead of opening a second one. ``GET /sinks/cases?external_id=``
  looks a case up (how the push job reads back an unknown outcome).

Both record what they received in the sandbox store's outbox, so tests see
exactly what left.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from billing_ai.sandbox.store import Store
from billing_ai.sandbox.world import make_id


def sink_routes(store: Store) -> list[Route]:
    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        if not isinstance(body, dict) or not body.get("text"):
            return PlainTextResponse("no_text", status_code=400)
        store.outbox_add("chat", body)
        return PlainTextResponse("ok")

    async def cases(request: Request) -> Response:
        if request.method == "GET":
            ext = request.query_params.get("external_id")
            found = [c for c in store.outbox_list("case") if ext is None or c["external_id"] == ext]
            return JSONResponse({"cases": found})
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "invalid JSON"}, status_code=400)
        missing = [k for k in ("external_id", "subject", "body") if not body.get(k)]
        if missing:
            return JSONResponse({"error": f"missing fields: {missing}"}, status_code=422)
        existing = next((c for c in store.outbox_list("case") if c["external_id"] == body["external_id"]), None)
        if existing:
            return JSONResponse(existing, status_code=200)
        case = {**body, "id": make_id("case", 0, body["external_id"]), "status": "new"}
        store.outbox_add("case", case)
        return JSONResponse(case, status_code=201)

    return [
        Route("/sinks/chat/{path:path}", chat, methods=["POST"]),
        Route("/sinks/cases", cases, methods=["GET", "POST"]),
    ]
