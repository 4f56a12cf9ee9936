"""Graceful stop on Ctrl-C / SIGTERM: the first signal sets a flag the training loop polls
(it then checkpoints and exits cleanly); a second one aborts at once.

    with GracefulStop() as stop:
        for step in range(start, total):
            ...
            if stop.requested:
                ckpt.save(step, ...)
                break
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any, Optional, Sequence

EXIT_INTERRUPTED = 130
"""Exit status of a run stopped by a signal after saving (the shell convention for SIGINT)."""


class GracefulStop:
    """Context manager installing handlers for ``signals`` (default SIGINT, SIGTERM).

    First signal: ``requested`` becomes True and a note is printed. Second signal: raises
    :class:`KeyboardInterrupt` from wherever the main thread is. Handlers are restored on
    exit. Outside the main thread (where Python cannot install handlers) it only offers
    :meth:`request`.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM), quiet: bool = False) -> None:
        self.signals = tuple(signals)
        self.quiet = quiet
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def request(self, reason: str = "request") -> None:
        """Asks the loop to stop as if a signal had arrived (e.g. a time budget ran out)."""
        self.requested = True
        self.signal_name = self.signal_name or reason

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            if not self.quiet:
                print(f"\n{name} again: aborting without saving", file=sys.stderr, flush=True)
            raise KeyboardInterrupt(name)
        self.requested = True
        self.signal_name = name
        if not self.quiet:
            print(f"\n{name}: saving a checkpoint and stopping (send again to abort)", file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
