"""API keys and the audit log over HTTP, for admin keys: create (the key is in the answer, once),
list, look at, revoke (POST .../revoke); the audit log newest first. `bev keys` does the same against Vault."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from bev.access import SCOPES, InvalidKeyRequest
from bev.access.keys import DEFAULT_REQUESTS_PER_HOUR, DEFAULT_TOKENS_PER_DAY
from bev.vocab import Tlp, UnknownTlp
from services.gateway.deps import ADMIN, CallerDep, get_guard
from services.gateway.routes.common import TLP_LABELS, Body, Int, PageCursor, decode_cursor, encode_cursor

router = APIRouter(tags=["access"])

_KEY_EXAMPLE = {"id": "k3x7q2m9v4b8n1c5d6f0", "name": "analyst laptop", "team": "blue", "scopes": ["read", "write"],
                "max_tlp": "amber", "requests_per_hour": 1000, "tokens_per_day": 200000,
                "created_at": "2026-12-01T10:00:00+00:00", "created_by": "bootstrap", "state": "active",
                "expires_at": None, "revoked_at": None}


class NewKeyBody(Body):
    name: str = Field(min_length=1, max_length=200, examples=["analyst laptop"])
    scopes: list[str] = Field(min_length=1, max_length=3, json_schema_extra={"items": {"enum": list(SCOPES)}},
                              examples=[["read", "write"]])
    team: str = Field(default="default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    max_tlp: str = Field(default="amber", json_schema_extra=TLP_LABELS,
                         description="the most restrictive TLP label the key may read")
    # Not strict: JSON has no datetime type, the ISO 8601 text is the value.
    expires_at: datetime | None = Field(default=None, strict=False, description="ISO 8601 with a zone; null: never",
                                        examples=["2027-01-01T00:00:00Z"])
    requests_per_hour: Int = Field(default=DEFAULT_REQUESTS_PER_HOUR, ge=1, le=10_000_000)
    tokens_per_day: Int = Field(default=DEFAULT_TOKENS_PER_DAY, ge=1, le=1_000_000_000)


@router.post("/api/v1/keys", status_code=201, dependencies=[ADMIN], responses={
    201: {"description": "The key: `key` is shown this once and never stored",
          "content": {"application/json": {"example": {**_KEY_EXAMPLE, "key": "bev_k3x7q2m9v4b8n1c5d6f0_…"}}}}})
async def create_key(body: NewKeyBody, request: Request, caller: CallerDep) -> JSONResponse:
    """A new API key for a team, with scopes (read, write, admin), a TLP ceiling, limits and an expiry."""
    try:
        max_tlp = Tlp.parse(body.max_tlp)
    except UnknownTlp as exc:
        raise HTTPException(400, str(exc)) from None
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise HTTPException(400, "expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z)")
    try:
        key, whole = await get_guard(request).keys.create(
            body.name, body.scopes, body.team, max_tlp=max_tlp, expires_at=body.expires_at,
            requests_per_hour=body.requests_per_hour, tokens_per_day=body.tokens_per_day, created_by=caller.key.id)
    except InvalidKeyRequest as exc:
        raise HTTPException(400, str(exc)) from None
    return JSONResponse({**key.to_json(), "key": whole}, status_code=201,
                        headers={"Location": f"/api/v1/keys/{key.id}"})


@router.get("/api/v1/keys", dependencies=[ADMIN])
async def list_keys(request: Request,
                    team: Annotated[str, Query(max_length=64, description="only this team's keys")] = "",
                    limit: Annotated[int, Query(ge=1, le=500)] = 100, cursor: PageCursor = "") -> dict[str, Any]:
    """Keys by id (never their secrets), `next_cursor` for the next page ("" on the last)."""
    keys = await get_guard(request).keys.list(team=team, after=decode_cursor(cursor), limit=limit + 1)
    page = keys[:limit]
    return {"keys": [k.to_json() for k in page],
            "next_cursor": encode_cursor(page[-1].id) if len(keys) > limit else ""}


@router.get("/api/v1/keys/{key_id}", dependencies=[ADMIN], responses={404: {"description": "No key by that id"}})
async def get_key(key_id: Annotated[str, Path(max_length=64)], request: Request) -> dict[str, Any]:
    key = await get_guard(request).keys.get(key_id)
    if key is None:
        raise HTTPException(404, f"no API key {key_id}")
    return key.to_json()


# POST, not DELETE: a revoked key is kept (its audit entries name it) and still answers GET.
@router.post("/api/v1/keys/{key_id}/revoke", dependencies=[ADMIN],
             responses={404: {"description": "No key by that id"}})
async def revoke_key(key_id: Annotated[str, Path(max_length=64)], request: Request) -> dict[str, Any]:
    """Revoke a key (idempotent): refused at once on this gateway replica, within its key cache
    time (5 s) on the others."""
    guard = get_guard(request)
    key = await guard.keys.revoke(key_id)
    if key is None:
        raise HTTPException(404, f"no API key {key_id}")
    guard.forget(key_id)
    return key.to_json()


@router.get("/api/v1/audit", dependencies=[ADMIN])
async def audit(request: Request,
                key_id: Annotated[str, Query(max_length=64, description="only this key's calls")] = "",
                team: Annotated[str, Query(max_length=64)] = "",
                status: Annotated[int, Query(ge=0, le=599, description="only answers with this status; 0: any")] = 0,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                cursor: Annotated[str, Query(pattern=r"^[0-9]{0,18}$",
                                             description="`next_cursor` of the previous page")] = "") -> dict[str, Any]:
    """Mutating and denied calls, newest first: key, team, route, object, status, time, trace id."""
    before = int(cursor) if cursor else 0
    entries = await get_guard(request).audit.list(before=before, limit=limit + 1, key_id=key_id, team=team,
                                                  status=status)
    page = entries[:limit]
    return {"entries": [e.to_json() for e in page], "next_cursor": str(page[-1].id) if len(entries) > limit else ""}
