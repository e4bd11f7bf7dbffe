"""API keys over REST, ``/api/v1/api-keys`` (ours: the documents only show the ``X-API-Key``
header). Admin only: ``auth.ADMIN_PREFIXES`` covers the prefix for every method. The secret is
in the answer of the POST and nowhere else; listings show the ``prefix``. Same store and rules as
``twingraph apikey`` (docs/decisions/0061-api-keys.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from twingraph.errors import NotFoundError
from twingraph.server.deps import services
from twingraph.server.envelope import ERROR_RESPONSES, iso, ok, page
from twingraph.stores.metadata.apikeys import ApiKeyRecord, SQLApiKeyStore

router = APIRouter(prefix="/api/v1/api-keys", tags=["api-keys"], responses=ERROR_RESPONSES)


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    roles: list[str] = Field(default_factory=lambda: ["read"], min_length=1,
                             description="read, write and/or admin")
    expires_in_seconds: int | None = Field(None, gt=0, le=36500 * 86400)


def _store(request: Request) -> SQLApiKeyStore:
    return SQLApiKeyStore(services(request).catalog.store)


def view(rec: ApiKeyRecord) -> dict[str, Any]:
    return {"id": rec.id, "name": rec.name, "prefix": rec.prefix, "roles": list(rec.roles),
            "status": rec.status(time.time()), "created_at": iso(rec.created_at),
            "last_used_at": iso(rec.last_used_at), "expires_at": iso(rec.expires_at),
            "revoked_at": iso(rec.revoked_at)}


@router.get("")
async def list_keys(request: Request) -> Any:
    recs = await asyncio.to_thread(_store(request).list)
    return page(request, [view(r) for r in recs], total=len(recs), limit=len(recs), offset=0)


@router.post("", status_code=201)
async def create_key(request: Request, body: ApiKeyIn) -> Any:
    expires_at = time.time() + body.expires_in_seconds if body.expires_in_seconds else None
    rec, secret = await asyncio.to_thread(_store(request).create, body.name, body.roles,
                                          expires_at=expires_at)
    return ok(request, {**view(rec), "key": secret})


@router.get("/{key_id}")
async def get_key(request: Request, key_id: str) -> Any:
    rec = await asyncio.to_thread(_store(request).get, key_id)
    if rec is None:
        raise NotFoundError(f"API key {key_id} not found")
    return ok(request, view(rec))


@router.delete("/{key_id}")
async def revoke_key(request: Request, key_id: str) -> Any:
    return ok(request, view(await asyncio.to_thread(_store(request).revoke, key_id)))
