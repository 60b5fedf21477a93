"""Calling one function in a fresh interpreter with another hash seed than the test's: for the
promises that must hold across processes (a flush retried by the next invocation names and
writes the same objects; another compaction run puts each row in the same part), which calling
the function twice in one process cannot check. Starts this venv's Python; touches nothing
else."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

_CALL = """
import importlib, pickle, sys
module, name, args = pickle.load(sys.stdin.buffer)
function = importlib.import_module(module)
for attribute in name.split("."):
    function = getattr(function, attribute)
sys.stdout.buffer.write(pickle.dumps(function(*args)))
"""


def in_a_fresh_process(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` as another interpreter computes it. `function` is found there by its
    module and name (so it must be defined at a module's top level); its arguments and its
    result travel pickled."""
    # Hashes of str (and so the order of sets of them) differ between processes, unless the
    # seed is the same: give the child one that differs from this process's.
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    child = subprocess.run(
        [sys.executable, "-c", _CALL],
        input=pickle.dumps((function.__module__, function.__qualname__, args)),
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": seed},
        timeout=120,
    )
    assert child.returncode == 0, child.stderr.decode(errors="replace")
    return pickle.loads(child.stdout)
