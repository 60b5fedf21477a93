"""What the commands show people on a terminal, and only there."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import click


class StatusLine:
    """`with StatusLine(render) as progress:` gives `progress(...)`, which redraws one line on
    stderr with `render(...)`, or None when stderr is not a terminal (a pipe, a log), so that
    callers skip the work. The line is erased at the end: the answer starts on a clean one."""

    def __init__(self, render: Callable[..., str]) -> None:
        self.render = render
        self.shown = False

    def __enter__(self) -> Callable[..., None] | None:
        return self._draw if sys.stderr.isatty() else None

    def __exit__(self, *exc_info: object) -> None:
        self.clear()

    def clear(self) -> None:
        """Erase the line, if it was drawn."""
        if self.shown:
            self.shown = False
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _draw(self, *args: Any) -> None:
        self.shown = True
        sys.stderr.write(f"\r\033[K{self.render(*args)}")
        sys.stderr.flush()


@contextlib.contextmanager
def ticking(
    render: Callable[..., str], poll: Callable[[], tuple[Any, ...]], every_s: float = 0.25
) -> Iterator[Callable[[], None]]:
    """While the block runs, a StatusLine redrawn with `render(*poll())` at its start, then every
    `every_s` seconds from a thread of its own (the main thread is busy in a query), on a
    terminal only. Yields `done()`, which draws it a last time and erases it, so that the answer
    starts on a clean line: call it before writing one."""
    status = StatusLine(render)
    with status as draw:
        if draw is None:
            yield lambda: None
            return
        stopped = threading.Event()
        drawing = threading.Lock()

        def tick() -> None:
            while not stopped.wait(every_s):
                with drawing:
                    if not stopped.is_set():
                        draw(*poll())

        def done() -> None:
            with drawing:
                if not stopped.is_set():
                    stopped.set()
                    draw(*poll())
                    status.clear()

        draw(*poll())
        ticker = threading.Thread(target=tick, name="status-line", daemon=True)
        ticker.start()
        try:
            yield done
        finally:
            done()
            ticker.join()


def table(rows: list[dict[str, Any]]) -> None:
    """Rows of one shape as aligned columns under their names."""
    names = list(rows[0])
    cells = [[str(row[name]) for name in names] for row in rows]
    widths = [max(len(name), *(len(r[i]) for r in cells)) for i, name in enumerate(names)]
    for line in [names, *cells]:
        click.echo("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)))


def needs_duckdb(command: str, exc: ImportError) -> click.ClickException:
    """The one line a command that needs the `query` extra says when DuckDB is missing (it is
    kept out of the Lambda bundles)."""
    return click.ClickException(
        f"event-ingest {command} needs DuckDB ({exc.name} is missing): "
        "from a checkout, pip install '.[query]'"
    )


def first_line(exc: BaseException) -> str:
    """An exception as one line, for an error message."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def archive_error(settings: Any, exc: BaseException) -> click.ClickException:
    """The archive could not be read or written: where, and the first line of why."""
    where = f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
    return click.ClickException(f"cannot read the archive at {where}: {first_line(exc)}")


def redis_error(settings: Any, exc: BaseException, role: str = "") -> click.ClickException:
    """Redis did not answer: where (without its password), what for, the first line of why."""
    from shared.settings import redacted_url

    where = redacted_url(settings.redis_url)
    return click.ClickException(f"cannot use Redis at {where}{role}: {first_line(exc)}")
