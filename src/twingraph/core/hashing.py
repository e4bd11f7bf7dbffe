"""Structural keys: what makes a task's result reusable.

A task's key is sha256 over (component identity, code version, canonical config, input digests).
An input digest is the content hash of the value — for a value produced by another task, the
producer's result content hash plus the path taken into it (``['outputs']['chunks'][3]``), so keys
form a Merkle DAG over *content*, not over upstream keys: if an upstream change produces the same
bytes, downstream tasks still hit (early cut-off).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

_JSON_SCALARS = (str, int, float, bool, type(None))


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8. Raises TypeError for non-JSON."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def structural_key(component: str, code_version: str, config: Mapping[str, Any],
                   input_digest: Any) -> str:
    """The memo key of a task. ``input_digest`` is a JSON-able digest of its inputs."""
    payload = {"c": component, "v": code_version, "cfg": config, "in": input_digest}
    try:
        return sha256_hex(canonical_json(payload))
    except (TypeError, ValueError):
        # Config with non-JSON values: fall back to repr, which is stable for plain values.
        payload["cfg"] = repr(sorted(config.items()))
        return sha256_hex(canonical_json(payload))


def digest_value(value: Any, ref_digest: Callable[[Any], Any] | None,
                 leaf_hash: Callable[[Any], str]) -> Any:
    """A JSON-able digest of an argument value.

    Containers are walked; references to other tasks' outputs become ``ref_digest(ref)`` (the
    caller decides what a reference is: it returns None for a non-reference); JSON scalars stay
    as they are (short strings) or become a hash; other leaves become ``leaf_hash(value)``.
    """
    if ref_digest is not None:
        rd = ref_digest(value)
        if rd is not None:
            return rd
    t = type(value)
    if t is str:
        return value if len(value) <= 64 else {"h": sha256_hex(value.encode())}
    if t in (int, bool) or value is None:
        return value
    if t is float:
        return {"f": repr(value)}
    if t is list or t is tuple:
        return {"l" if t is list else "t": [digest_value(v, ref_digest, leaf_hash) for v in value]}
    if t is dict and all(type(k) is str for k in value):
        return {"d": {k: digest_value(v, ref_digest, leaf_hash) for k, v in value.items()}}
    return {"x": leaf_hash(value)}
