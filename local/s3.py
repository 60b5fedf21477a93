"""An S3-compatible endpoint on loopback for `make run`, the tests and the benchmark: moto's
HTTP server, with the archive bucket created."""

from __future__ import annotations

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
