"""Optional zstd compression with bounded memory and a give-up rule.

Policy (both stores): values smaller than ``min_size`` are never compressed (the frame overhead
and the call cost outweigh the saving on tiny results). Otherwise the *first chunk* is compressed
on trial; if it does not shrink by at least ``MIN_SAVING`` (10 %) the value is stored raw and its
metadata says ``compression=None`` — already-compressed data (images, archives, random arrays)
costs one trial chunk, not a whole pass. The content hash is always of the uncompressed bytes.
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass
from typing import Any

from twingraph.errors import ConfigurationError, IntegrityError
from twingraph.stores.results._common import check_hash, joined

MIN_SAVING = 0.10
SUPPORTED = (None, "zstd")


def zstd() -> Any:
    """The zstandard module (a core dependency, imported on first use)."""
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - a dependency of twingraph
        raise ConfigurationError("zstd compression needs zstandard: pip install zstandard") \
            from exc
    return zstandard


@dataclass(frozen=True)
class CompressionPolicy:
    kind: str | None = None
    level: int = 3
    min_size: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in SUPPORTED:
            raise ConfigurationError(
                f"unknown compression {self.kind!r}: 'zstd', or none (compression=None; "
                "TWINGRAPH_COMPRESSION empty, 'none' or 'off')")
        if self.kind is not None:
            # Checked by making a compressor now: a level zstd refuses would otherwise be
            # accepted here and fail every put that compresses.
            level = self.level
            try:
                if isinstance(level, bool) or not isinstance(level, int):
                    raise TypeError(f"an int, got {type(level).__name__}")
                self.compressor()
            except (TypeError, ValueError, OverflowError) as exc:
                raise ConfigurationError(f"bad zstd compression_level {level!r}: {exc}") from exc

    def wants(self, size: int) -> bool:
        return self.kind is not None and size >= self.min_size

    def compressor(self) -> Any:
        return zstd().ZstdCompressor(level=self.level)


def worth_it(raw_len: int, compressed_len: int) -> bool:
    return compressed_len <= raw_len * (1 - MIN_SAVING)


def decompress_frame(data: bytes, raw_size: int, key: str, expected_hash: str) -> bytes:
    """Decompress one zstd frame of known size. A frame that does not decode is corruption:
    ``IntegrityError`` (like a hash mismatch), never a half-decoded value."""
    z = zstd()
    try:
        out: bytes = z.ZstdDecompressor().decompress(data, max_output_size=raw_size)
    except z.ZstdError as exc:
        raise IntegrityError(key, expected_hash, f"<undecodable zstd frame: {exc}>") from exc
    if len(out) != raw_size:
        raise IntegrityError(key, expected_hash,
                             f"<zstd frame of {len(out)} bytes, not {raw_size}>")
    return out


def pack_small(p: Any, cctx: Any, policy: CompressionPolicy) -> tuple[Any, str, str | None]:
    """A small value in one piece: (bytes to store, verified content hash, compression used).

    Joins the value's buffers, checks them against the hash the caller gave (if any), and
    compresses with ``cctx`` when the policy wants it and it pays off."""
    blob = joined(p.views) if p.views else b""
    digest = check_hash(p, hashlib.sha256(blob).hexdigest())
    comp = None
    if cctx is not None and policy.wants(p.size):
        packed = cctx.compress(blob)
        if worth_it(p.size, len(packed)):
            blob, comp = packed, "zstd"
    return blob, digest, comp
