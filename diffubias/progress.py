"""Progress reporting shared by every stage: a callback type and a way to give a sub-task a
share of the caller's bar.

A stage reports `progress(fraction, message)` with fraction in [0, 1]. The CLI passes nothing (a
tqdm bar per loop is enough there), the app passes its job's progress, which also raises when
the job is stopped. Knows nothing of either.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[float, str], None]


def part(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    """Maps a sub-task's progress in [0, 1] onto [start, end] of the caller's bar."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * fraction, message)


def report(progress: ProgressFn | None, fraction: float, message: str) -> None:
    """Calls `progress` if there is one."""
    if progress is not None:
        progress(fraction, message)
