"""Progress reporting and cancellation shared by the CLI (tqdm bar) and Slicer (progress lines).

A ``Progress`` maps work onto [0, 1]; ``sub(a, b)`` gives a child covering [a, b] of the parent so
each stage reports its own 0..1. ``check()`` raises ``Cancelled`` once cancellation was requested.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional


class Cancelled(Exception):
    """The user cancelled a long computation."""


class Progress:
    def __init__(self, callback: Optional[Callable[[float, str], None]] = None,
                 cancel_event: Optional[threading.Event] = None,
                 _start: float = 0.0, _end: float = 1.0):
        self._callback = callback
        self.cancel_event = cancel_event or threading.Event()
        self._start, self._end = _start, _end

    def update(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1) of this (sub)task done; raises ``Cancelled`` if cancelled."""
        self.check()
        if self._callback is not None:
            f = min(max(float(fraction), 0.0), 1.0)
            self._callback(self._start + f * (self._end - self._start), message)

    def sub(self, start: float, end: float) -> "Progress":
        span = self._end - self._start
        return Progress(self._callback, self.cancel_event,
                        self._start + start * span, self._start + end * span)

    def cancel(self) -> None:
        self.cancel_event.set()

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("cancelled by the user")


NULL_PROGRESS = Progress()


def as_progress(progress: Optional[Progress]) -> Progress:
    return progress if progress is not None else Progress()


def run_to_end(steps):
    """Run a generator that does its work a step at a time (yielding between steps) to its end; its
    return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
