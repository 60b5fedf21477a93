"""`make run`'s stack (`python -m local.stack`, the code `make run` runs) on a busy machine:
its internal ports taken, its public one taken, killed while starting, restarted."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import urllib3

from local.stack import ROOT, is_loopback
from tests.conftest import free_port, wait_until

EVENT = b'{"batch": [{"type": "track", "userId": "u1", "event": "Signed Up"}]}'


@pytest.fixture
def held_default_ports() -> Iterator[None]:
    """Something listens on Redis's and moto's default ports (unless something already does)."""
    held = []
    for port in (6379, 5000):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # despite TIME_WAIT
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            held.append(sock)
        except OSError:
            sock.close()  # something listens there already: all the better
    yield
    for sock in held:
        sock.close()


@pytest.fixture(autouse=True)
def _nothing_survives_a_failed_test(tmp_path: Path) -> Iterator[None]:
    """A failing test must not leave its stack running: kill what is left, by environment."""
    yield
    for proc in stack_processes(tmp_path):
        with contextlib.suppress(OSError):
            os.kill(int(proc.split()[0]), signal.SIGKILL)


def start_stack(data_dir: Path, bind: str, **env: str) -> subprocess.Popen:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "S3_ENDPOINT_URL", "MOTO_PORT", "METRICS_PORT")
    }
    environment.update(EVENT_INGEST_DATA_DIR=str(data_dir), BIND=bind, FLUSH_INTERVAL_S="1", **env)
    # To files, not pipes nobody reads while it runs: a full pipe would stall the stack.
    runs = len(list(data_dir.glob("out-*.log")))
    with (
        (data_dir / f"out-{runs}.log").open("w") as out,
        (data_dir / f"err-{runs}.log").open("w") as err,
    ):
        process = subprocess.Popen(
            [sys.executable, "-m", "local.stack"],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    process.logs = (data_dir / f"out-{runs}.log", data_dir / f"err-{runs}.log")  # type: ignore[attr-defined]
    return process


def output(stack: subprocess.Popen) -> tuple[str, str]:
    out, err = stack.logs  # type: ignore[attr-defined]
    return out.read_text(), err.read_text()


def sourced(env_file: Path) -> dict[str, str]:
    values = {}
    for line in env_file.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = value.strip("'")
    return values


def stop(stack: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str, str]:
    stack.send_signal(sig)
    stack.wait(timeout=90)
    return (stack.returncode, *output(stack))


def stack_processes(data_dir: Path) -> list[str]:
    """Processes of a stack on `data_dir`: its redis-server (its --dir), gunicorn and runner
    (their environment names the data directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(data_dir).encode() in environ or str(data_dir) in command:
            found.append(f"{proc.name} {command}")
    return found


def archived_keys(values: dict[str, str]) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=values["S3_ENDPOINT_URL"],
        aws_access_key_id=values["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    listing = client.list_objects_v2(Bucket=values["S3_BUCKET"])
    return [item["Key"] for item in listing.get("Contents", [])]


@pytest.mark.usefixtures("held_default_ports")
def test_internal_ports_move_the_archive_survives_a_restart_and_nothing_is_left(tmp_path):
    bind = f"127.0.0.1:{free_port()}"
    env_file = tmp_path / "stack.env"
    stack = start_stack(tmp_path, bind)
    try:
        wait_until(env_file.exists, timeout_s=60, what="the stack to start")
        values = sourced(env_file)
        assert not values["REDIS_URL"].endswith(":6379/0")
        assert not values["S3_ENDPOINT_URL"].endswith(":5000")
        headers = {
            "Content-Type": "application/json",
            **urllib3.make_headers(basic_auth="dev-write-key:"),
        }
        answer = urllib3.request("POST", f"http://{bind}/batch", body=EVENT, headers=headers)
        assert answer.status == 202
        # On loopback, the metrics are open and pages of any origin pass Chrome's Private
        # Network Access check (refused by default: tests/abuse).
        assert urllib3.request("GET", f"http://{bind}/metrics").status == 200
        preflight = {
            "Origin": "https://preview.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Private-Network": "true",
        }
        answer = urllib3.request("OPTIONS", f"http://{bind}/v1/t", headers=preflight)
        assert answer.headers["Access-Control-Allow-Private-Network"] == "true"
        before = wait_until(lambda: archived_keys(values), timeout_s=30, what="an archived object")
    finally:
        code, out, _ = stop(stack)
    assert code == 0
    assert "saved 1 archived objects" in out
    assert not env_file.exists()
    assert stack_processes(tmp_path) == []

    again = start_stack(tmp_path, bind)
    try:
        wait_until(env_file.exists, timeout_s=60, what="the stack to start again")
        assert archived_keys(sourced(env_file)) == before  # yesterday's events are still there
    finally:
        code, out, _ = stop(again, signal.SIGTERM)
    assert code == 0 and "restored 1 archived objects" in out
    assert stack_processes(tmp_path) == []


def test_only_a_loopback_address_opens_the_metrics_and_private_network_access():
    for bind in ("127.0.0.1:8000", "127.0.0.2:80", "[::1]:8000", "localhost:8000"):
        assert is_loopback(bind), bind
    for bind in ("0.0.0.0:8000", "[::]:8000", "10.0.0.5:8000", "events.example.com:80"):
        assert not is_loopback(bind), bind


def test_a_taken_ingest_address_is_one_line_and_starts_nothing(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        bind = f"127.0.0.1:{holder.getsockname()[1]}"
        started = time.monotonic()
        stack = start_stack(tmp_path, bind)
        stack.wait(timeout=30)
        out, err = output(stack)
    assert stack.returncode == 1
    assert time.monotonic() - started < 15
    lines = err.strip().splitlines()
    assert lines == [
        f"make run: {bind} is in use (the ingest address); stop what holds it, or set"
        " BIND=127.0.0.1:PORT"
    ]
    assert "Traceback" not in out + err
    assert stack_processes(tmp_path) == []


def test_killed_while_starting_leaves_nothing(tmp_path):
    stack = start_stack(tmp_path, f"127.0.0.1:{free_port()}")
    # Once Redis is up, before the stack is done starting.
    wait_until(lambda: (tmp_path / "stack.pids").exists(), timeout_s=30, what="Redis")
    code, _, err = stop(stack, signal.SIGTERM)
    assert code in (0, 130), err
    assert "Traceback" not in err
    wait_until(lambda: stack_processes(tmp_path) == [], timeout_s=10, what="no process left")


def test_processes_left_by_a_killed_run_are_stopped_not_shared(tmp_path):
    bind = f"127.0.0.1:{free_port()}"
    env_file = tmp_path / "stack.env"
    first = start_stack(tmp_path, bind)
    wait_until(env_file.exists, timeout_s=60, what="the stack to start")
    leftovers = [
        int(line.split()[0]) for line in (tmp_path / "stack.pids").read_text().splitlines()
    ]
    os.kill(first.pid, signal.SIGKILL)  # make run SIGKILLed: its children live on
    first.wait()
    assert len(leftovers) == 3 and all(Path(f"/proc/{pid}").exists() for pid in leftovers)
    env_file.unlink()
    second = start_stack(tmp_path, bind)  # the same address, the same Redis files
    try:
        wait_until(env_file.exists, timeout_s=60, what="the stack to start over the leftovers")
    finally:
        code, out, _ = stop(second)
    assert code == 0
    assert all(f"(pid {pid})" in out for pid in leftovers)
    assert stack_processes(tmp_path) == []


@pytest.mark.parametrize(
    ("env", "part"),
    [
        ({"REDIS_SERVER": "/bin/false"}, "make run: Redis did not start"),
        ({"WEB_CONCURRENCY": "many"}, "make run: ingest (gunicorn) exited with"),
    ],
    ids=["redis", "gunicorn"],
)
def test_a_part_that_fails_to_start_stops_the_rest_and_says_which(tmp_path, env, part):
    started = time.monotonic()
    stack = start_stack(tmp_path, f"127.0.0.1:{free_port()}", **env)
    stack.wait(timeout=60)
    _, err = output(stack)
    assert stack.returncode == 1
    assert time.monotonic() - started < 30
    assert part in err
    assert stack_processes(tmp_path) == []


def first_steps(page: Path) -> tuple[str, str]:
    """The page's shell block that sends the first event and queries it, as (the lines up to
    the query, the rest): the rest runs once the consumer has flushed."""
    for block in re.findall(r"^```sh\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL):
        if "stack.env" in block and "event-ingest query" in block:
            lines = block.splitlines()
            query = next(i for i, line in enumerate(lines) if "event-ingest query" in line)
            return "\n".join(lines[:query]), "\n".join(lines[query:])
    raise AssertionError(f"{page.name} shows no first event and query")


def run_shell(script: str, env_file: Path) -> str:
    script = script.replace(".data/stack.env", str(env_file))
    done = subprocess.run(
        ["bash", "-euc", f". {env_file}\n{script}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={key: value for key, value in os.environ.items() if key != "REDIS_URL"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_first_event_and_query_work_as_the_readme_and_quickstart_write_them(tmp_path):
    bind = f"127.0.0.1:{free_port()}"
    env_file = tmp_path / "stack.env"
    stack = start_stack(tmp_path, bind)
    try:
        wait_until(env_file.exists, timeout_s=60, what="the stack to start")
        for page in (ROOT / "README.md", ROOT / "docs" / "quickstart.md"):
            sending, reading = first_steps(page)
            archived = len(archived_keys(sourced(env_file)))
            assert "HTTP/1.1 202" in run_shell(sending, env_file), page.name
            wait_until(
                lambda archived=archived: len(archived_keys(sourced(env_file))) > archived,
                timeout_s=30,
                what="the event archived",
            )
            answers = run_shell(reading, env_file)
            assert "Signed Up" in answers and "u1" in answers, page.name  # the query's row
            assert "archiver" in answers, page.name  # status: the consumer group
    finally:
        code, _, err = stop(stack)
    assert code == 0, err
