"""What the whitelist promises the API, pinned: which policy an app gets, what a
policy may read and run (`*`, case), the defaults of a minimal file, and the
start-up refusals, each naming the file and the place of the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from analytics_shared.whitelist import (
    DEFAULT_WHITELIST_PATH,
    AppPolicy,
    Whitelist,
    WhitelistError,
    load_whitelist,
)


def _load(tmp_path: Path, doc: dict[str, Any]) -> Whitelist:
    path = tmp_path / "wl.json"
    path.write_text(json.dumps(doc))
    return load_whitelist(path)


def _refusal(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "wl.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(WhitelistError) as err:
        load_whitelist(path)
    return str(err.value).replace(str(path), "<file>")


def test_a_minimal_file_gets_the_documented_defaults(tmp_path):
    wl = _load(tmp_path, {"policies": {"default": {"tables": ["orders"]}}})
    assert (wl.version, wl.default_policy, wl.unknown_apps) == (1, "default", "default")
    policy = wl.policies["default"]
    assert policy.allow_ad_hoc_sql is True
    assert (policy.named_queries, policy.allowed_table_functions) == ([], [])
    assert (policy.rate_limit, policy.row_filters, policy.column_policies) == (None, {}, {})
    # Unknown apps (and tokens without one) get the default policy unless refused.
    assert wl.policy_for("anything") is policy and wl.policy_for(None) is policy


def test_apps_select_their_policy_and_unknown_ones_can_be_refused(tmp_path):
    doc = {
        "unknown_apps": "refuse",
        "policies": {"default": {"tables": ["orders"]}, "narrow": {"tables": ["inventory"]}},
        "apps": {"shop": "narrow"},
    }
    wl = _load(tmp_path, doc)
    assert wl.policy_for("shop") is wl.policies["narrow"]
    assert wl.policy_for("other") is None and wl.policy_for(None) is None


def test_may_read_is_case_insensitive_and_star_means_every_table():
    policy = AppPolicy(tables=["Orders"])
    assert policy.may_read("orders") and policy.may_read("ORDERS")
    assert not policy.may_read("inventory")
    assert AppPolicy(tables=["*"]).may_read("anything")


def test_may_run_names_queries_exactly_or_all_with_a_star():
    policy = AppPolicy(tables=[], named_queries=["low_stock"])
    assert policy.may_run("low_stock")
    assert not policy.may_run("LOW_STOCK") and not policy.may_run("orders_by_status")
    assert AppPolicy(tables=[], named_queries=["*"]).may_run("orders_by_status")
    assert not AppPolicy(tables=[]).may_run("low_stock")


def test_a_loaded_whitelist_cannot_be_changed_in_place(tmp_path):
    # Loaded once and shared by every request; the API compiles each policy's
    # rules once (cached by identity), so a part changed afterwards would be
    # served with stale rules.
    key = {"sha256": "a" * 64, "policy": "default", "scopes": []}
    spec = {"allowed_columns": ["id"]}
    policy = {
        "tables": ["t"],
        "named_queries": ["q"],
        "rate_limit": {"requests": 1, "window_seconds": 1},  # the smallest allowed
        "column_policies": {"t": spec},
    }
    query = {"sql": "SELECT 1", "parameters": {"n": {"type": "integer"}}}
    doc = {"policies": {"default": policy}, "named_queries": {"q": query}, "api_keys": {"k": key}}
    wl = _load(tmp_path, doc)
    default = wl.policies["default"]
    parts = [
        (wl, "unknown_apps"),
        (default, "allow_ad_hoc_sql"),
        (default.rate_limit, "requests"),
        (default.column_policies["t"], "allowed_columns"),
        (wl.named_queries["q"], "sql"),
        (wl.named_queries["q"].parameters["n"], "required"),
        (wl.api_keys["k"], "policy"),
    ]
    for part, name in parts:
        with pytest.raises(ValidationError, match="frozen"):
            setattr(part, name, None)


def test_a_parameter_is_required_unless_it_says_otherwise(tmp_path):
    doc = {
        "policies": {"default": {"tables": [], "named_queries": ["q"]}},
        "named_queries": {"q": {"sql": "SELECT 1", "parameters": {"n": {"type": "integer"}}}},
    }
    parameter = _load(tmp_path, doc).named_queries["q"].parameters["n"]
    assert parameter.required is True and parameter.from_claim is None
    # Any non-empty claim name will do, one character too.
    doc["named_queries"]["q"]["parameters"]["n"]["from_claim"] = "c"
    assert _load(tmp_path, doc).named_queries["q"].parameters["n"].from_claim == "c"


def test_the_default_file_and_a_missing_one(tmp_path):
    assert load_whitelist(None) == load_whitelist(DEFAULT_WHITELIST_PATH)
    missing = tmp_path / "nope.json"
    with pytest.raises(WhitelistError) as err:
        load_whitelist(missing)
    assert str(err.value) == f"query whitelist not found: {missing}"


def test_refusals_name_the_first_problem_by_its_path(tmp_path):
    # Two problems: the one earliest in the document is reported.
    doc = {"policies": {"a": {"tables": ["x y"]}, "b": {"tables": ["ok"], "bad": 1}}}
    assert _refusal(tmp_path, doc).startswith("query whitelist <file> is invalid at policies/a/")
    assert _refusal(tmp_path, {"policies": {}, "surprise": 1}) == (
        "query whitelist <file> is invalid at <root>: Additional properties are not allowed"
        " ('surprise' was unexpected)"
    )


def test_unknown_policy_and_query_names_are_listed(tmp_path):
    doc = {"policies": {"default": {"tables": []}}, "apps": {"a": "zz", "b": "yy"}}
    assert _refusal(tmp_path, doc) == (
        "query whitelist <file> names unknown policies: ['yy', 'zz']"
    )
    doc = {"policies": {"p": {"tables": []}}, "default_policy": "p"}
    assert _load(tmp_path, doc).policy_for(None) is not None
    # Every name but "*" must exist, whatever characters it has.
    doc = {"policies": {"default": {"tables": [], "named_queries": ["*", "nope", "$x"]}}}
    assert _refusal(tmp_path, doc) == (
        "query whitelist <file>: policy 'default' allows unknown named queries ['nope', '$x']"
    )


def test_rules_must_name_tables_the_policy_reads(tmp_path):
    for section, rule in (("row_filters", "id > 0"), ("column_policies", {})):
        doc = {"policies": {"default": {"tables": ["orders"], section: {"customers": rule}}}}
        assert _refusal(tmp_path, doc) == (
            "query whitelist <file>: policy 'default' restricts table 'customers'"
            " which it does not list in its tables"
        )
    # Case does not matter, and "*" covers every table.
    ok = {"tables": ["Orders"], "row_filters": {"ORDERS": "id > 0"}}
    assert _load(tmp_path, {"policies": {"default": ok}})
    star = {"tables": ["*"], "column_policies": {"customers": {"masked_columns": {"e": "null"}}}}
    assert _load(tmp_path, {"policies": {"default": star}})


def test_a_masked_column_must_be_an_allowed_one(tmp_path):
    spec = {"allowed_columns": ["ID", "email"], "masked_columns": {"Email": "hash", "z": "null"}}
    doc = {"policies": {"p": {"tables": ["c"], "column_policies": {"c": spec}}}}
    doc["default_policy"] = "p"
    assert _refusal(tmp_path, doc) == (
        "query whitelist <file>: policy 'p' masks columns of 'c' that are not in its"
        " allowed_columns: ['z']"
    )
    # Every table is checked, also after one without allowed_columns.
    open_spec = {"masked_columns": {"z": "null"}}
    doc = {
        "policies": {"p": {"tables": ["a", "c"], "column_policies": {"a": open_spec, "c": spec}}}
    }
    doc["default_policy"] = "p"
    assert "masks columns of 'c'" in _refusal(tmp_path, doc)
    # Without allowed_columns every column is visible, so any may be masked.
    spec = {"masked_columns": {"z": "null"}}
    doc = {"policies": {"default": {"tables": ["c"], "column_policies": {"c": spec}}}}
    assert (
        _load(tmp_path, doc).policies["default"].column_policies["c"].masked_columns
        == spec["masked_columns"]
    )


def test_what_only_the_models_check_is_refused_at_its_path_too(tmp_path):
    # The JSON Schema does not check date-time formats; the model does.
    key = {"sha256": "a" * 64, "policy": "default", "scopes": [], "expires_at": "next tuesday"}
    doc = {"policies": {"default": {"tables": []}}, "api_keys": {"svc": key, "tool": key}}
    assert _refusal(tmp_path, doc).startswith(  # the first of the two
        "query whitelist <file> is invalid at api_keys/svc/expires_at: Input should be"
    )
