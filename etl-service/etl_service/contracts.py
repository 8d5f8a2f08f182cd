"""Schema contracts: what a table's sync does when its source columns change.

Per table in TABLE_CONFIG (`"schema_contract"`):

- `evolve` (default): the table is reloaded in its new shape (new columns get
  their values for existing rows), and the change is announced;
- `freeze`: any added, removed or retyped column fails that table's sync with
  a dead letter naming the change; the working table and every published
  version keep the old shape until the source is put back or the contract
  relaxed (the other tables keep syncing);
- `discard_new_columns`: added columns are not read (the table keeps its
  shape and syncs incrementally); a removed or retyped column cannot be
  ignored that way and fails like `freeze`.

A change is the difference between the columns the working DuckDB holds
(what was published) and the source's reflected columns, both as DuckDB types:
a change the consumers cannot see (`varchar(16)` to `varchar(32)`) is no change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal, get_args

from analytics_shared.manifest import ColumnSchema, SchemaChange
from etl_service.errors import SchemaContractError
from etl_service.source import TableShape

__all__ = [
    "CONTRACTS",
    "Contract",
    "ContractDecision",
    "SchemaContractError",
    "apply_contract",
    "describe_change",
    "diff_shape",
]

Contract = Literal["evolve", "freeze", "discard_new_columns"]
CONTRACTS: tuple[str, ...] = get_args(Contract)

Columns = Sequence[tuple[str, str | None]]


def diff_shape(
    table: str,
    contract: str,
    held: Columns,
    source: Columns,
    canonical: Callable[[str], str],
) -> SchemaChange | None:
    """The change from `held` (the working table) to `source`; None when equal.

    Types are compared after `canonical` (DuckDB's own spelling); a source
    column whose type is left to the extractor (None) is compared by name.
    """
    old = {n: t for n, t in held}
    new = {n: t for n, t in source}
    added = [ColumnSchema(name=n, type=t or "?") for n, t in source if n not in old]
    removed = [ColumnSchema(name=n, type=t or "?") for n, t in held if n not in new]
    retyped: dict[str, list[str]] = {}
    for name, new_type in source:
        old_type = old.get(name)
        if old_type is None or new_type is None:
            continue
        before, after = canonical(old_type), canonical(new_type)
        if before != after:
            retyped[name] = [before, after]
    if not (added or removed or retyped):
        return None
    return SchemaChange(
        table=table,
        detected_at=datetime.now(UTC),
        contract=contract,
        action="pending",
        added=added,
        removed=removed,
        retyped=retyped,
    )


def describe_change(change: SchemaChange) -> str:
    parts = []
    if change.added:
        parts.append("added " + ", ".join(f"{c.name} {c.type}" for c in change.added))
    if change.removed:
        parts.append("removed " + ", ".join(c.name for c in change.removed))
    if change.retyped:
        parts.append(
            "retyped " + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in change.retyped.items())
        )
    return "; ".join(parts)


class ContractDecision:
    """What the sync does about a change: reload in the new shape, or read the held columns."""

    def __init__(self, change: SchemaChange, shape: TableShape, reload: bool) -> None:
        self.change = change
        self.shape = shape
        self.reload = reload


def apply_contract(
    change: SchemaChange, shape: TableShape, held_names: Sequence[str]
) -> ContractDecision:
    """Decide by the table's contract; `freeze` (and what discarding cannot hide) raises."""
    contract = change.contract
    if contract == "evolve":
        return ContractDecision(change.model_copy(update={"action": "evolved"}), shape, True)
    if contract == "discard_new_columns" and not (change.removed or change.retyped):
        kept = TableShape(
            tuple(shape.column(n) for n in held_names),
            tuple(c for c in shape.primary_key if c in held_names),
        )
        return ContractDecision(change.model_copy(update={"action": "discarded"}), kept, False)
    refused = change.model_copy(update={"action": "refused"})
    raise SchemaContractError(
        f"table {change.table!r}: source columns changed ({describe_change(change)}) and its"
        f" schema contract is {contract!r}; the old shape keeps being served. Revert the"
        ' source change, or set "schema_contract": "evolve" in TABLE_CONFIG to reload it',
        refused,
    )
