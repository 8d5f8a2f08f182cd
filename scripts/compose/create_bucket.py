"""docker compose only: create the bucket STORAGE_URL names, once the S3 server answers.

Reads the same variables as the services (STORAGE_URL or S3_BUCKET, S3_ENDPOINT_URL,
S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) through the shared settings
class, so the bucket it creates is the one the ETL and the API use. Idempotent.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from analytics_shared.settings import CommonSettings, load_settings


def main() -> int:
    settings = load_settings(CommonSettings)
    url = urlparse(settings.resolved_storage_url)
    if url.scheme != "s3":
        print(f"create-bucket: {settings.resolved_storage_url} is not an s3:// URL; nothing to do")
        return 0
    bucket = url.netloc
    secret = settings.aws_secret_access_key
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region or "us-east-1",
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + float(os.environ.get("BUCKET_WAIT_SECONDS", "120"))
    while True:
        try:
            client.head_bucket(Bucket=bucket)
            print(f"create-bucket: {bucket} exists")
            return 0
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                error: Exception = exc
            else:
                region = client.meta.region_name
                kwargs = (
                    {}
                    if region == "us-east-1"
                    else {"CreateBucketConfiguration": {"LocationConstraint": region}}
                )
                client.create_bucket(Bucket=bucket, **kwargs)
                print(f"create-bucket: created {bucket}")
                return 0
        except BotoCoreError as exc:  # not listening yet
            error = exc
        if time.monotonic() > deadline:
            print(f"create-bucket: giving up on {bucket}: {error}", file=sys.stderr)
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
