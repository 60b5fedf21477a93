"""The console script, and running it on a terminal (a pty), as a person does."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def console_script() -> str:
    script = shutil.which("event-ingest", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("event-ingest is not installed: pip install -e '.[dev]'")
    return script


def on_terminal(
    command: list[str], env: dict[str, str], interrupt_at: bytes | None = None
) -> tuple[str, int]:
    """Run `command` with a terminal as its stdout and stderr; what it wrote, and its exit
    status. With `interrupt_at`, SIGINT (Ctrl-C) once that text appears."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
            start_new_session=True,
        )  # fmt: skip
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if interrupt_at is not None and interrupt_at in seen:
                process.send_signal(signal.SIGINT)
                interrupt_at = None
        return seen.decode(), process.wait(timeout=60)
    finally:
        os.close(leader)
