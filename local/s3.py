"""An S3-compatible endpoint on loopback for `make run`, the tests and the benchmark: moto's
HTTP server, with the archive bucket created, and (for `make run`) its objects saved to and
restored from files."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

# moto accepts any credentials; boto3 insists on having some.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_moto_server(port: int) -> tuple[ThreadedMotoServer, str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def ensure_bucket(endpoint_url: str | None, bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint_url)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


def save_bucket(endpoint_url: str, bucket: str, directory: Path) -> int:
    """Copy every object of `bucket` to files under `directory` (replacing what was there):
    moto's server keeps nothing on disk, and `make run` keeps the archive across restarts."""
    client = boto3.client("s3", endpoint_url=endpoint_url)
    staging = directory.with_name(directory.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            path = staging / item["Key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            count += 1
    staging.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)  # a stop interrupted before this keeps the previous copy
    return count


def restore_bucket(endpoint_url: str, bucket: str, directory: Path) -> int:
    """Put back what `save_bucket` copied; returns how many objects."""
    if not directory.is_dir():
        return 0
    client = boto3.client("s3", endpoint_url=endpoint_url)
    files = [path for path in sorted(directory.rglob("*")) if path.is_file()]
    for path in files:
        client.put_object(
            Bucket=bucket, Key=path.relative_to(directory).as_posix(), Body=path.read_bytes()
        )
    return len(files)
