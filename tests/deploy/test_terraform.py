"""infrastructure/terraform: formatted (terraform fmt), providers and Terraform pinned."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "infrastructure" / "terraform"


def test_terraform_fmt_check() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on PATH; `terraform fmt -check` not run")
    # No update check over the network; nothing else is needed for fmt.
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, f"run `terraform fmt -recursive`:\n{result.stdout}"


def test_terraform_and_providers_are_pinned() -> None:
    versions = (TERRAFORM_DIR / "versions.tf").read_text(encoding="utf-8")
    assert re.search(r'required_version\s*=\s*"[^"]*\d', versions)
    block = re.search(r"required_providers\s*\{(.*?)\n  \}", versions, re.S)
    assert block, "versions.tf needs a required_providers block"
    providers = re.findall(r"(\w+)\s*=\s*\{(.*?)\}", block.group(1), re.S)
    assert providers
    for name, body in providers:
        assert re.search(r'source\s*=\s*"', body), f"provider {name} has no source"
        assert re.search(r'version\s*=\s*"[^"]*\d', body), f"provider {name} is not pinned"


def test_bucket_is_private_versioned_encrypted_with_lifecycle() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(TERRAFORM_DIR.glob("*.tf")))
    for resource in (
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_lifecycle_configuration",
    ):
        assert f'resource "{resource}"' in text, resource
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert re.search(rf"{flag}\s*=\s*true", text), flag
    assert 'status = "Enabled"' in text
    for prefix in ("history/", "logs/"):
        assert f'{{local.key_prefix}}{prefix}"' in text, f"no lifecycle rule for {prefix}"
