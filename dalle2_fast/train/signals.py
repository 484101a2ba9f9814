"""SIGTERM/SIGINT during training: finish the current step, write a training checkpoint, exit.

:class:`StopRequest` installs handlers that only record the signal; the loop polls ``signum``
after each step, saves, and exits with status ``128 + signum`` (the shell convention), so a
killed run loses nothing and ``--resume`` continues exactly. A second signal of the same kind
while stopping falls through to the default action (a hard stop)."""
from __future__ import annotations

import signal
import threading


class StopRequest:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.signum is not None:  # second signal: give up on the graceful path
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers only from the main thread
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum) if self.signum is not None else 0
