"""Invoke a Lambda handler the way the Python runtime does, in a process of its own.

    python -I -S lambda_invoke.py TASK_DIR HANDLER [LIBRARY_DIR ...]  < request.json

Like the runtime: the working directory and the first import path are the function's package
(TASK_DIR, what `sam build` makes of its CodeUri), the handler is imported by its dotted name,
and each invocation gets a context whose `get_remaining_time_in_millis()` counts down from the
function's budget. A handler still running when that reaches zero is killed, as Lambda kills
it. `-I -S` keep the test's virtualenv (and its editable install of this repo) out of the
way: only TASK_DIR and the LIBRARY_DIRs given (where the dependencies are) can be imported.

The request is `{"invocations": [{"event": {...}, "budget_ms": N}, ...]}`, run one after the
other in the same process (a warm function). The report is stdout's last line, one JSON object;
the lines before it are what the handler printed (EMF metrics, say).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
import uuid

TIMED_OUT_EXIT = 3


class Context:
    """The parts of the Lambda context object a handler may read."""

    def __init__(self, budget_ms: int, function_name: str) -> None:
        self.deadline = time.monotonic() + budget_ms / 1000
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = "512"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def kill_at_deadline(context: Context, returned: threading.Event) -> None:
    def watch() -> None:
        if not returned.wait(max(0.0, context.deadline - time.monotonic())):
            print(json.dumps({"timed_out": True}), flush=True)
            os._exit(TIMED_OUT_EXIT)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    task_dir, handler_name, *library_dirs = sys.argv[1:]
    os.environ.setdefault("AWS_LAMBDA_FUNCTION_NAME", handler_name.split(".")[1])  # as Lambda
    os.chdir(task_dir)
    sys.path[:] = [task_dir, *[p for p in sys.path if p and "site-packages" not in p]]
    sys.path += library_dirs
    request = json.load(sys.stdin)

    module_name, _, attribute = handler_name.rpartition(".")
    handler = getattr(importlib.import_module(module_name), attribute)

    results = []
    for invocation in request["invocations"]:
        context = Context(invocation["budget_ms"], module_name)
        returned = threading.Event()
        kill_at_deadline(context, returned)
        response = handler(invocation["event"], context)
        remaining_ms = context.get_remaining_time_in_millis()
        returned.set()
        results.append({"response": response, "remaining_ms": remaining_ms})

    project_modules = {
        name: getattr(module, "__file__", None)
        for name, module in sys.modules.items()
        if name.split(".")[0] in ("functions", "shared", "local")
    }
    print(json.dumps({"results": results, "modules": project_modules}), flush=True)


if __name__ == "__main__":
    main()
