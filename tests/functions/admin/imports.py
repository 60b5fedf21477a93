"""What importing a module loads, asked of a fresh interpreter (tests.fresh_process): a
module this process imported already cannot be told apart from one the import pulled in."""

from __future__ import annotations

import importlib
import sys


def modules_loaded_by(module: str) -> list[str]:
    importlib.import_module(module)
    return sorted(sys.modules)
