"""The DAG file form refuses what its parsers would silently drop or misread."""
import pytest

from twingraph.dagfile import load_dag_file, parse_dag_text
from twingraph.errors import ValidationError


@pytest.mark.parametrize("text, fmt", [
    ("nodes:\n  a: {operation: x}\n  a: {operation: y}\n", "yaml"),
    ('{"nodes": {"a": {"operation": "x"}, "a": {"operation": "y"}}}', "json"),
    ('{"nodes": {"a": {"operation": "x"}, "a": {"operation": "y"}}}', None),
    ("nodes:\n - {id: a, operation: x, operation: y}\n", "yaml"),
])
def test_a_key_given_twice_is_refused(text, fmt):
    """The last of two nodes (or fields) with one key silently won."""
    with pytest.raises(ValidationError, match="given twice"):
        parse_dag_text(text, fmt=fmt)


def test_a_yaml_merge_may_still_be_overridden():
    dag = parse_dag_text("nodes:\n - &n {id: a, operation: x}\n - {<<: *n, id: b}\n")
    assert [(n.node_id, n.operation) for n in dag.nodes] == [("a", "x"), ("b", "x")]


def test_an_unknown_top_level_key_is_refused():
    """A misspelt ``dependencies`` dropped its ordering edges without a word."""
    with pytest.raises(ValidationError, match=r"unknown top-level keys \['dependecies'\]"):
        parse_dag_text("nodes: [{id: a, operation: x}]\ndependecies: {a: []}\n")


def test_a_json_file_with_a_byte_order_mark_is_read(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b'\xef\xbb\xbf{"nodes": [{"id": "a", "operation": "x"}]}')
    assert [n.node_id for n in load_dag_file(p).nodes] == ["a"]
