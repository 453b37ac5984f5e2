"""Progress of a run on the terminal: each stage with its duration, drawn with rich on a TTY only.

The pipeline reports stages through a plain callable (`progress("export: torch -> ONNX")`); a
`Progress` is such a callable. On a terminal it shows a spinner with the current stage and its
elapsed time and, when the next stage starts, prints the finished one with its duration. Elsewhere
(CI logs, pipes) it prints one plain `· stage` line per stage, without control codes. Colours
follow rich, which honours NO_COLOR.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class Progress:
    """Callable progress sink. Use as a context manager so the last stage is closed on exit."""

    def __init__(self, *, enabled: bool = True, stream: IO[str] | None = None, force_terminal: bool | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.timings: list[tuple[str, float]] = []  # finished stages and their seconds
        self._stage: str | None = None
        self._t0 = 0.0
        self._status: Any = None
        self._console: Any = None
        tty = force_terminal if force_terminal is not None else _isatty(self.stream)
        if enabled and tty:
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True if force_terminal else None, highlight=False)

    @property
    def live(self) -> bool:
        """True when drawing with rich on a terminal."""
        return self._console is not None

    def __call__(self, stage: str) -> None:
        if self._stage is not None and stage.startswith(self._stage + " "):
            # the stage's own closing line ("candidate 2/9: int8 ... 1.2 s", "... skipped: why"):
            # it replaces the timing line instead of starting a stage of its own
            self._finish(closing=stage)
            return
        self._finish()
        self._stage, self._t0 = stage, time.perf_counter()
        if not self.enabled:
            return
        if self._console is None:
            print(f"· {stage}", file=self.stream, flush=True)
            return
        from rich.markup import escape

        if self._status is None:
            from rich.progress import Progress as Live, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._status = Live(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                console=self._console, transient=True)
            self._status.start()
            self._task = self._status.add_task(escape(stage), total=None)
        else:
            self._status.reset(self._task, description=escape(stage), total=None)

    def advance(self, done: int, total: int) -> None:
        """Within a stage: `done` of `total` units (epochs, replicates) finished."""
        if self._status is not None:
            from rich.markup import escape

            self._status.update(self._task, description=f"{escape(self._stage or '')} ({done}/{total})")

    def _finish(self, closing: str | None = None) -> None:
        if self._stage is None:
            return
        secs = time.perf_counter() - self._t0
        self.timings.append((self._stage, secs))
        if self.enabled and self._console is not None:
            from rich.markup import escape

            line = escape(closing) if closing is not None else f"{escape(self._stage)} [dim]{_secs(secs)}[/dim]"
            self._console.print(f"[green]✓[/green] {line}")
        elif self.enabled and closing is not None:
            print(f"· {closing}", file=self.stream, flush=True)
        self._stage = None

    def close(self, *, ok: bool = True) -> None:
        """Stop drawing; the last stage counts as finished only when `ok` (no error, no Ctrl-C)."""
        if ok:
            self._finish()
        self._stage = None
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.close(ok=exc_type is None)


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s >= 0.95 else f"{s:.2f} s"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
