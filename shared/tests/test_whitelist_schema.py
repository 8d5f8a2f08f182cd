"""The whitelist is described twice: the JSON Schema file checked first
(`schemas/query_whitelist.schema.json`, for the JSON path of a typo) and the
pydantic models of `analytics_shared.whitelist`. This test fails when they
disagree on any object's fields, required fields, closedness, enumerations or
JSON types. The schema may be stricter (patterns, minimums): those refine a
field, they do not change which fields exist.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from analytics_shared.whitelist import SCHEMA_PATH, Whitelist

# Known disagreement, kept as it is (no behaviour change): the file schema
# allows a "$schema" key for editors, which the model (extra="forbid") refuses.
SCHEMA_ONLY_FIELDS = {"": {"$schema"}}


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[1]]
    # pydantic writes `X | None` as anyOf [X, null]; the file leaves the key out instead.
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        return _resolve(options[0], root)
    return node


def _kind(node: dict[str, Any]) -> Any:
    """What a value must be, ignoring refinements (patterns, bounds, descriptions)."""
    if "enum" in node:
        return ("enum", sorted(node["enum"]))
    if "const" in node:
        return ("integer" if isinstance(node["const"], int) else "string", None)
    return (node.get("type", "any"), None)


Roots = tuple[dict[str, Any], dict[str, Any]]  # the file's schema, the models' schema


def _compare(
    file_node: dict[str, Any],
    model_node: dict[str, Any],
    roots: Roots,
    where: str,
    problems: list[str],
) -> None:
    file_root, model_root = roots
    f, m = _resolve(file_node, file_root), _resolve(model_node, model_root)
    if f.get("type") == "array" or m.get("type") == "array":
        if f.get("type") != m.get("type"):
            problems.append(f"{where}: array in one, {_kind(f)} / {_kind(m)} in the other")
            return
        f_items, m_items = f.get("items", {}), m.get("items", {})
        if _kind(_resolve(m_items, model_root)) != ("string", None) or "enum" not in f_items:
            _compare(f_items, m_items, roots, where + "[]", problems)
        return
    if "properties" in f or "properties" in m:
        _compare_object(f, m, roots, where, problems)
        return
    if f.get("type") == "object" or m.get("type") == "object":
        f_values, m_values = f.get("additionalProperties"), m.get("additionalProperties")
        if isinstance(f_values, dict) and isinstance(m_values, dict):
            _compare(f_values, m_values, roots, where + "{}", problems)
        elif f.get("type") != m.get("type"):
            problems.append(f"{where}: object in one only")
        return
    file_kind, model_kind = _kind(f), _kind(m)
    if file_kind != model_kind and file_kind[0] != "any" and model_kind[0] != "any":
        problems.append(f"{where}: schema says {file_kind}, model says {model_kind}")


def _compare_object(
    f: dict[str, Any], m: dict[str, Any], roots: Roots, where: str, problems: list[str]
) -> None:
    file_fields = set(f.get("properties", {})) - SCHEMA_ONLY_FIELDS.get(where, set())
    model_fields = set(m.get("properties", {}))
    if file_fields != model_fields:
        problems.append(
            f"{where or '<root>'}: only in the schema {sorted(file_fields - model_fields)},"
            f" only in the model {sorted(model_fields - file_fields)}"
        )
    if set(f.get("required", [])) != set(m.get("required", [])):
        problems.append(
            f"{where or '<root>'}: required {sorted(f.get('required', []))} in the schema,"
            f" {sorted(m.get('required', []))} in the model"
        )
    if f.get("additionalProperties") is not False or m.get("additionalProperties") is not False:
        problems.append(f"{where or '<root>'}: not closed (additionalProperties) in both")
    for name in sorted(file_fields & model_fields):
        _compare(f["properties"][name], m["properties"][name], roots, f"{where}/{name}", problems)


def _problems(file_schema: dict[str, Any]) -> list[str]:
    model_schema = Whitelist.model_json_schema()
    problems: list[str] = []
    _compare(file_schema, model_schema, (file_schema, model_schema), "", problems)
    return problems


def test_the_json_schema_file_agrees_with_the_pydantic_models() -> None:
    assert _problems(json.loads(SCHEMA_PATH.read_text())) == []


@pytest.mark.parametrize(
    "mutation",
    [
        lambda s: s["$defs"]["policy"]["properties"].pop("allow_ad_hoc_sql"),
        lambda s: s["$defs"]["parameter"]["properties"]["type"]["enum"].append("uuid"),
        lambda s: s["$defs"]["named_query"]["required"].append("description"),
        lambda s: s["$defs"]["api_key"]["properties"]["description"].update(type="integer"),
    ],
)
def test_a_drifted_schema_is_caught(mutation: Any) -> None:
    file_schema = json.loads(SCHEMA_PATH.read_text())
    mutation(file_schema)
    assert _problems(file_schema)
