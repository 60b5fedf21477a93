"""docs/configuration.md is the reference for every setting: each variable `Settings` reads has
a row there, with its real default, and every row names a variable that exists."""

from __future__ import annotations

import dataclasses
import re

from shared.settings import Settings
from tests.docs.configuration_page import settings_rows


def test_every_setting_has_a_row_and_every_row_is_a_setting() -> None:
    variables = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    rows = settings_rows()
    assert sorted(variables - rows.keys()) == [], "settings missing from docs/configuration.md"
    assert sorted(rows.keys() - variables) == [], "rows for variables that do not exist"


def test_documented_numeric_defaults_are_the_real_ones() -> None:
    """A default written as a number (`1048576`, `0.5`) is the setting's default."""
    defaults = {f.metadata["env"]: f.default for f in dataclasses.fields(Settings)}
    checked = 0
    for name, documented in settings_rows().items():
        number = re.fullmatch(r"`(-?[0-9_.]+)`", documented)
        if number and isinstance(defaults[name], int | float):
            assert float(number.group(1)) == defaults[name], name
            checked += 1
    assert checked >= 10  # the table's numbers are really compared
