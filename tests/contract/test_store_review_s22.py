"""Review findings (session 22) on bad input to the stores: each is refused with a TwinGraph
error, and nothing is written (the metadata store on SQLite and on the machine's PostgreSQL,
the result stores over their real files)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twingraph.core.records import RunRecord
from twingraph.core.results import DataType, StorageMetadata
from twingraph.core.states import RunState
from twingraph.errors import StorageError, ValidationError
from twingraph.stores.metadata import SQLMetadataStore
from twingraph.stores.metadata.memory import MemoryMetadataStore
from twingraph.stores.results.filesystem import FilesystemStorage
from twingraph.stores.results.sqlite import SQLiteStorage

ROOT = Path(__file__).resolve().parents[2]


def test_memory_store_refuses_the_same_times() -> None:
    with pytest.raises(ValidationError):
        MemoryMetadataStore().write([RunRecord("r", "p", RunState.RUNNING, created_at=float("nan"))])


def test_runs_cancel_takes_a_reason_that_is_not_utf8(tmp_path: Path) -> None:
    """A terminal's bytes that are not UTF-8 reach Python as lone surrogates: the command
    ended in a traceback and the run stayed RUNNING. The reason is stored escaped."""
    home = tmp_path / "home"
    home.mkdir()
    meta = SQLMetadataStore(f"sqlite:///{home / 'twingraph.db'}", create=True)
    meta.write([RunRecord("abcdef0123456789", "p", RunState.RUNNING, created_at=1.0,
                          started_at=1.0, heartbeat_at=1.0)])
    meta.close()
    env = dict(os.environ, TWINGRAPH_HOME=str(home))
    env.pop("TWINGRAPH_DATABASE_URL", None)
    p = subprocess.run([sys.executable, "-m", "twingraph", "runs", "cancel", "abcdef0123456789",
                        "--reason", os.fsdecode(b"disk \xff full")],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    meta = SQLMetadataStore(f"sqlite:///{home / 'twingraph.db'}")
    try:
        run = meta.get_run("abcdef0123456789")
        assert run.state is RunState.CANCELLED and run.error == "disk \\udcff full"
    finally:
        meta.close()


def _meta(key: str, data: bytes) -> StorageMetadata:
    return StorageMetadata(node_id=key, data_type=DataType.BINARY,
                           content_hash=hashlib.sha256(data).hexdigest(), size=len(data))


@pytest.mark.parametrize("make", [lambda p: SQLiteStorage(str(p / "r.db")),
                                  lambda p: FilesystemStorage(str(p / "fs"))],
                         ids=["sqlite", "filesystem"])
def test_buffers_of_objects_are_refused_and_empty_shapes_are_empty(tmp_path: Path, make) -> None:
    """A NumPy object array's buffer was stored as pointer bytes (meaningless when read
    back); a view with a zero in its shape raised a raw ``TypeError``."""
    s = make(tmp_path)
    try:
        with pytest.raises(StorageError):
            s.put("o", memoryview(np.array([1, "a", None], dtype=object)), _meta("o", b""))
        assert s.get("o") is None
        s.put("e", memoryview(np.zeros((0, 3))), _meta("e", b""))
        assert bytes(s.get("e")) == b""
        rec = np.zeros(2, dtype=[("Offset", "<f8"), ("n", "<i4")])     # "O" in a field name
        s.put("r", memoryview(rec), _meta("r", rec.tobytes()))
        assert bytes(s.get("r")) == rec.tobytes()
    finally:
        s.close()
