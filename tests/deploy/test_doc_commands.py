"""Every `analytics-etl ...` / `analytics-api ...` command in the operating docs' bash
blocks exists: `<cli> <subcommand> --help` exits 0 and lists each --option used.
Lines whose trailing comment says "planned" are skipped until the command lands."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from testsupport.doc_commands import CLIS, DocCommand, bash_lines, parse

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "runbook.md", ROOT / "docs" / "deployment-guide.md")
ALL_COMMANDS = list(dict.fromkeys(c for doc in DOCS if doc.exists() for c in parse(doc)))


@cache
def help_text(cli: str, *words: str) -> tuple[int, str]:
    binary = Path(sys.executable).parent / cli
    if not binary.exists():
        pytest.fail(f"{binary} missing: install the packages (make install)")
    result = subprocess.run(
        [str(binary), *words, "--help"], capture_output=True, text=True, timeout=120
    )
    return result.returncode, result.stdout + result.stderr


def command_help(command: DocCommand) -> tuple[list[str], int, str]:
    """Help of the deepest (sub)subcommand the line names, e.g. `dlq list`."""
    path = [command.subcommand]
    code, text = help_text(command.cli, *path)
    for word in command.words[1:]:
        choices = re.search(r"\{([\w,-]+)\}", text.split("\n\n", 1)[0])
        if code != 0 or not choices or word not in choices.group(1).split(","):
            break
        path.append(word)
        code, text = help_text(command.cli, *path)
    return path, code, text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_bash_blocks_hold_one_command_per_line(doc: Path) -> None:
    assert doc.exists(), f"{doc} is missing"
    lines = bash_lines(doc)
    assert lines, f"{doc.name} has no ```bash blocks"
    for line in lines:
        assert not line.rstrip().endswith("\\"), f"{doc.name}: one command per line: {line}"
        shlex.split(line)  # balanced quotes


def test_the_runbook_uses_both_clis() -> None:
    used = {c.cli for c in ALL_COMMANDS if c.doc == "runbook.md" and not c.planned}
    assert used == set(CLIS)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(
            c,
            id=f"{c.doc}:{c.line.split('#')[0].strip()}",
            marks=[pytest.mark.skip(reason=f"planned: {c.line}")] if c.planned else [],
        )
        for c in ALL_COMMANDS
    ],
)
def test_documented_command_exists(command: DocCommand) -> None:
    assert command.subcommand and not command.subcommand.startswith("-"), command.line
    path, code, text = command_help(command)
    name = " ".join([command.cli, *path])
    assert code == 0, f"`{name}` does not exist:\n{text}"
    for option in command.options:
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", text), (
            f"`{command.line}`: {option} is not an option of {name}"
        )
