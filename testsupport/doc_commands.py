"""The CLI commands written in the operating docs' bash blocks, parsed: what
tests/deploy/test_doc_commands.py checks against `--help` and what
tests/test_runbook_recipes.py runs."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CLIS", "DocCommand", "bash_lines", "parse"]

CLIS = ("analytics-etl", "analytics-api")
_BASH_BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class DocCommand:
    doc: str
    cli: str
    words: tuple[str, ...]  # everything after the CLI's name, comment excluded
    planned: bool
    line: str = field(compare=False)

    @property
    def subcommand(self) -> str:
        return self.words[0] if self.words else ""

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(w.split("=", 1)[0] for w in self.words[1:] if w.startswith("--"))


def bash_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [line for block in _BASH_BLOCK.findall(text) for line in block.splitlines()]


def parse(path: Path) -> list[DocCommand]:
    commands = []
    for raw in bash_lines(path):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = shlex.split(line)
        comment_at = next((i for i, t in enumerate(tokens) if t.startswith("#")), len(tokens))
        words, comment = tokens[:comment_at], " ".join(tokens[comment_at:])
        for i, word in enumerate(words):
            if word in CLIS:
                commands.append(
                    DocCommand(
                        doc=path.name,
                        cli=word,
                        words=tuple(words[i + 1 :]),
                        planned="planned" in comment.lower(),
                        line=line,
                    )
                )
    return commands
