"""The JSON/YAML file form of a declarative DAG, parsed into a ``DAGDefinition``.

    dag_id: example                 # optional (default: the file's stem)
    nodes:                          # a list of nodes, or a mapping id -> node
      - id: numbers                 # also accepted: node_id
        operation: make_numbers     # a registered operation or component
        parameters: {n: 10}
      - id: total
        operation: add_all
        arguments: [numbers]        # node ids (a list; or a mapping name -> node id)
    dependencies: {total: []}       # optional extra ordering edges

Errors name the offending node and field; nothing runs before the whole file is valid.
Text whose format is not given (no ``.json``/``.yaml`` suffix) is read as JSON when it starts
with ``{`` and as YAML otherwise, or when it is not JSON (YAML flow style: ``{nodes: [...]}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twingraph.engine.dynamic import DAGDefinition, NodeDefinition
from twingraph.errors import ValidationError

_NODE_KEYS = {"id", "node_id", "operation", "arguments", "parameters", "metadata"}
_DAG_KEYS = {"dag_id", "nodes", "dependencies", "metadata"}


def parse_dag_text(text: str, *, default_id: str = "dag", fmt: str | None = None) -> DAGDefinition:
    try:
        if fmt == "json":
            doc = _json(text)
        elif fmt is None and text.lstrip().startswith("{"):
            try:
                doc = _json(text)
            except _DuplicateKey:
                raise
            except ValueError:
                doc = _flow_yaml(text)
        else:
            doc = _yaml(text)
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse error is a validation error here
        raise ValidationError(f"cannot parse DAG definition: {exc}") from exc
    return dag_from_dict(doc, default_id=default_id)


class _DuplicateKey(ValidationError):
    """A mapping of the file names one key twice: JSON and YAML parsers keep the last, so a
    node (or a node's field) given twice was silently replaced by the second."""


def _no_duplicates(pairs: list[tuple[Any, Any]], where: Any = None) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, v in pairs:
        if k in out:
            line = f" (line {where})" if where is not None else ""
            raise _DuplicateKey(f"cannot parse DAG definition: key {k!r} is given twice in one "
                                f"mapping{line}")
        out[k] = v
    return out


def _json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicates)


def _yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for k, _ in node.value:     # its own keys (a merged ``<<: *base`` may be overridden)
            if k.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(k, deep=True)
            try:
                if key in seen:
                    _no_duplicates([(key, None), (key, None)], node.start_mark.line + 1)
                seen.add(key)
            except TypeError:       # unhashable: construct_mapping says so
                pass
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _flow_yaml(text: str) -> Any:
    """Text that starts with ``{`` but is not JSON, read as YAML flow style. Without anchors
    and aliases: callers take such text for JSON and check YAML text for them elsewhere (the
    server refuses them, as a few bytes of aliases can stand for a huge document)."""
    import yaml
    for token in yaml.scan(text):
        if isinstance(token, (yaml.AliasToken, yaml.AnchorToken)):
            raise ValidationError("cannot parse DAG definition: YAML anchors and aliases are "
                                  "not accepted in text that starts with '{'")
    return _yaml(text)


def load_dag_file(path: str | Path) -> DAGDefinition:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")     # a byte order mark (Windows editors) too
    except OSError as exc:
        raise ValidationError(f"cannot read {p}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ValidationError(f"cannot read {p}: not UTF-8 text (byte {exc.start}: "
                              f"{exc.reason})") from exc
    fmt = "json" if p.suffix == ".json" else "yaml" if p.suffix in (".yaml", ".yml") else None
    return parse_dag_text(text, default_id=p.stem, fmt=fmt)


def dag_from_dict(doc: Any, *, default_id: str = "dag") -> DAGDefinition:
    if not isinstance(doc, dict):
        raise ValidationError("a DAG definition is a mapping with 'nodes'")
    extra = sorted(set(doc) - _DAG_KEYS, key=str)
    if extra:      # a misspelt 'dependencies' dropped its ordering edges without a word
        raise ValidationError(f"unknown top-level keys {extra} (allowed: "
                              f"{', '.join(sorted(_DAG_KEYS))})")
    raw_nodes = doc.get("nodes")
    if isinstance(raw_nodes, dict):
        bad = [k for k, v in raw_nodes.items() if v is not None and not isinstance(v, dict)]
        if bad:
            raise ValidationError(f"nodes[{bad[0]!r}] must be a mapping")
        for k, v in raw_nodes.items():     # the key is the id: another one inside is a conflict
            other = next((x for x in ((v or {}).get("id"), (v or {}).get("node_id"))
                          if x is not None and x != k), None)
            if other is not None:       # {"a": {"id": "b"}} became node b: "a" then dangled
                raise ValidationError(f"nodes[{k!r}]: its id is its key; it also says {other!r}")
        raw_nodes = [{**(v or {}), "id": k} for k, v in raw_nodes.items()]
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ValidationError("'nodes' must be a non-empty list or mapping")
    nodes = []
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            raise ValidationError(f"nodes[{i}] must be a mapping")
        nid = raw.get("id", raw.get("node_id"))
        where = f"node {nid!r}" if nid is not None else f"nodes[{i}]"
        if "id" in raw and "node_id" in raw and raw["id"] != raw["node_id"]:
            raise ValidationError(f"{where}: 'id' and 'node_id' differ ({raw['id']!r}, "
                                  f"{raw['node_id']!r}); give one")
        unknown = set(raw) - _NODE_KEYS
        if unknown:
            raise ValidationError(f"{where}: unknown fields {sorted(unknown)}")
        if not isinstance(nid, str) or not nid:
            raise ValidationError(f"{where}: 'id' must be a non-empty string")
        op = raw.get("operation")
        if not isinstance(op, str) or not op:
            raise ValidationError(f"{where}: 'operation' must be a non-empty string")
        args = raw.get("arguments", [])
        if isinstance(args, dict):
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
                raise ValidationError(f"{where}: 'arguments' maps names to node ids (strings)")
        elif not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValidationError(f"{where}: 'arguments' must be a list of node ids")
        params = raw.get("parameters", {}) or {}
        if not isinstance(params, dict):
            raise ValidationError(f"{where}: 'parameters' must be a mapping")
        nodes.append(NodeDefinition(nid, op, args, params, raw.get("metadata")))
    deps = doc.get("dependencies", {}) or {}
    if not isinstance(deps, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
            for k, v in deps.items()):
        raise ValidationError("'dependencies' maps node ids to lists of node ids")
    dag_id = doc.get("dag_id", default_id)
    if not isinstance(dag_id, str) or not dag_id:
        raise ValidationError("'dag_id' must be a non-empty string")
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValidationError("'metadata' must be a mapping (it becomes the run's params)")
    if metadata is not None:
        # It is stored as the run's params: a value JSON cannot hold (YAML reads
        # ``when: 2024-01-01`` as a date) would fail the run before it is even recorded.
        try:
            json.dumps(metadata, sort_keys=True, allow_nan=False)   # as the stores write it
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"'metadata' must be JSON data (it becomes the run's params; "
                                  f"quote dates and times): {exc}") from exc
    return DAGDefinition(dag_id, nodes, deps, metadata)
