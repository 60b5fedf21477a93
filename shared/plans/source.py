"""Where the tracking plan comes from: TRACKING_PLAN, a YAML or JSON file or an `s3://bucket/key`
object, read at start and again every TRACKING_PLAN_RELOAD_S (shared/reloaded.py).

A plan that cannot be read or used at start fails the start, in one line naming TRACKING_PLAN
and the rule; a new plan that cannot (a typo saved mid-edit, an object removed) is refused with
a warning and the plan in use stays, as a rotated write key that cannot be read does. A plan
whose text has not changed is not compiled again.

An `s3://` plan is read with boto3 (imported only then), with the archive's endpoint
(S3_ENDPOINT_URL) and credentials; not through the archive's adapter, whose package ingest does
not ship (pyarrow).
"""

from __future__ import annotations

from shared.plans.model import PlanError
from shared.plans.validation import CompiledPlan, load_compiled
from shared.reloaded import Reloaded
from shared.settings import ConfigError, Settings

# A plan of a few hundred events is a few hundred KB; anything far larger is a mistake (a log
# file named by accident), refused rather than parsed.
MAX_PLAN_BYTES = 8 << 20


class PlanUnreadable(OSError):
    """The plan's file or object could not be read; the message names it."""


def read_plan_text(location: str, settings: Settings | None = None) -> str:
    """The text at `location` (a path, or `s3://bucket/key`)."""
    data = _read_s3(location, settings) if location.startswith("s3://") else _read_file(location)
    if len(data) > MAX_PLAN_BYTES:
        raise PlanUnreadable(f"{location}: larger than {MAX_PLAN_BYTES >> 20} MB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanUnreadable(f"{location}: not UTF-8 text") from None


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise PlanUnreadable(f"{path}: {exc.strerror or type(exc).__name__}") from None


def _read_s3(location: str, settings: Settings | None) -> bytes:
    import boto3  # lazily: only a plan in S3 pays for botocore's import
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = location[len("s3://") :].partition("/")
    if not bucket or not key:
        raise PlanUnreadable(f"{location}: not s3://bucket/key")
    config = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 2})
    endpoint = (settings or Settings()).s3_endpoint_url
    client = boto3.client("s3", endpoint_url=endpoint, config=config)
    try:
        answer = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{MAX_PLAN_BYTES}")
        return answer["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise PlanUnreadable(f"{location}: {_S3_REASONS.get(code, code)}") from None
    except BotoCoreError as exc:
        raise PlanUnreadable(f"{location}: {type(exc).__name__}") from None


_S3_REASONS = {"NoSuchKey": "no such object", "NoSuchBucket": "no such bucket"}


class _CompiledOnChange:
    """`load_compiled`, skipped when the text is the one compiled last."""

    def __init__(self) -> None:
        self._text: str | None = None
        self._plan: CompiledPlan | None = None

    def __call__(self, text: str) -> CompiledPlan:
        if text != self._text or self._plan is None:
            self._plan, self._text = load_compiled(text), text
        return self._plan


def reloading_plan(settings: Settings) -> Reloaded | None:
    """The deployment's tracking plan, read now and kept current; None without TRACKING_PLAN.
    ConfigError (one line) when it cannot be read or used at start."""
    location = settings.tracking_plan
    if not location:
        return None
    plan = Reloaded(
        location,
        settings.tracking_plan_reload_s,
        fetch=lambda name: read_plan_text(name, settings),
        parse=_CompiledOnChange(),
        what="TRACKING_PLAN",
        failures=(PlanUnreadable, PlanError),
    )
    try:
        plan.value()
    except (PlanUnreadable, PlanError) as exc:
        raise ConfigError(f"TRACKING_PLAN: {exc}") from None
    return plan
