"""Where an object's bytes go: an S3-compatible bucket (AWS S3, MinIO, moto)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from shared.settings import Settings


@dataclass
class ObjectStore:
    client: Any
    bucket: str

    @classmethod
    def from_settings(
        cls, settings: Settings, attempts: int = 1, read_timeout_s: float = 8
    ) -> ObjectStore:
        """A bounded client. By default one attempt and 8 s, so one hung request cannot outlast
        the consumer's stop margin (the drain loop retries, with its own backoff, while the
        budget allows); readers that retry nothing themselves ask for more attempts."""
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            config=Config(
                connect_timeout=3,
                read_timeout=read_timeout_s,
                retries={"max_attempts": attempts, "mode": "standard"},
            ),
        )
        return cls(client, settings.s3_bucket)

    def put(self, key: str, body: bytes, content_type: str = "application/x-ndjson") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
