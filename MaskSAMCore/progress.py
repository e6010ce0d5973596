"""Progress for people (a bar with ETA on stderr) and for programs (JSON lines on stdout).

The Slicer module runs the core's CLI in a background process and parses lines of the form::

    @masksam {"event": "progress", "stage": "predict", "done": 12, "total": 40, "eta_s": 8.1, ...}
    @masksam {"event": "epoch", "epoch": 3, "epochs": 50, "train_loss": 0.81, "mean_dice": 0.62, ...}
    @masksam {"event": "done", ...}

`event` is one of ``stage`` (a new stage begins), ``progress``, ``epoch``, ``case`` and
``case_error`` (``masksam predict``: a case written, a case skipped), ``message``, ``warning``,
``done`` and ``error`` (the ``EVENT_*`` names below; the Slicer module reads the same words).
Machine lines are printed when `enable_machine_lines(True)` was called (the `--machine-progress`
flag) or the environment has ``MASKSAM_MACHINE_PROGRESS=1``; people read the same events as bars on
stderr and plain lines on stdout (`EpochRecord.describe`).

Cancellation: `install_signal_handlers()` turns SIGTERM (what the Slicer module and job
schedulers send) into `Cancelled`, so `finally` blocks remove temporaries exactly as for Ctrl-C.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from typing import Any, Optional, TextIO

from MaskSAMCore.errors import Cancelled
from MaskSAMCore.paths import environment_flag

MACHINE_PREFIX = "@masksam "

# The events of the machine lines (their "event" field).
EVENT_STAGE = "stage"             # a new stage begins: stage, total, done
EVENT_PROGRESS = "progress"       # a stage advanced: stage, done, total, fraction, elapsed_s, eta_s
EVENT_EPOCH = "epoch"             # a training epoch ended: epoch, epochs, train_loss, mean_dice, ...
EVENT_CASE = "case"               # predict wrote a case: case, output, index, total, ...
EVENT_CASE_ERROR = "case_error"   # predict skipped a case: case, message, index, total
EVENT_MESSAGE = "message"         # a line for the job's status: message
EVENT_WARNING = "warning"         # something the user should know when the job ends: message
EVENT_DONE = "done"               # the command finished; its results
EVENT_ERROR = "error"             # the command failed (or was cancelled: cancelled=True): message
_machine_lines = environment_flag("MASKSAM_MACHINE_PROGRESS")


def enable_machine_lines(enabled: bool) -> None:
    """Switch the ``@masksam {...}`` lines on stdout on or off for this process."""
    global _machine_lines
    _machine_lines = enabled


def emit(event: str, always: bool = False, **fields: Any) -> None:
    """Print one machine-readable line (if enabled, or `always`)."""
    if not (_machine_lines or always):
        return
    payload = {"event": event, **fields}
    sys.stdout.write(MACHINE_PREFIX + json.dumps(payload, default=_jsonable) + "\n")
    sys.stdout.flush()


def print_message(message: str, event: bool = False) -> None:
    """Tell the user what the work is doing when no bar shows it (a retry, a file replaced): one
    ``masksam: ...`` line on stderr, flushed so it lands before the next bar. With `event`, also
    a ``message`` event for programs (the Slicer module shows the latest one under its bar)."""
    print(f"masksam: {message}", file=sys.stderr, flush=True)
    if event:
        emit(EVENT_MESSAGE, message=message)


def print_note(message: str) -> None:
    """Say how a setting or the data changed what the command does (nothing is wrong): one
    ``masksam: note: ...`` line on stderr, flushed so it lands before the next bar."""
    print(f"masksam: note: {message}", file=sys.stderr, flush=True)


def print_warning(message: str) -> None:
    """Say something the user should know but that does not stop the work: one
    ``masksam: warning: ...`` line on stderr (the Slicer module gathers these from the log and
    shows them when the job ends), and a ``warning`` event for programs."""
    print(f"masksam: warning: {message}", file=sys.stderr, flush=True)
    emit(EVENT_WARNING, message=message)


def parse_machine_line(line: str) -> Optional[dict]:
    """The payload of an ``@masksam`` line, or None for any other line (used by the Slicer logic)."""
    line = line.strip()
    if not line.startswith(MACHINE_PREFIX.strip()):
        return None
    try:
        payload = json.loads(line[len(MACHINE_PREFIX.strip()):].strip())
    except json.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) and "event" in payload else None


def format_duration(seconds: Optional[float]) -> str:
    """``1:02:03``, ``4:05`` or ``?`` for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """A progress bar with rate and ETA for one stage of work.

    >>> bar = Progress("predict", total=len(windows))
    >>> for window in windows:
    ...     ...
    ...     bar.advance()
    >>> bar.close()
    """

    def __init__(
        self,
        stage: str,
        total: Optional[int],
        unit: str = "it",
        stream: Optional[TextIO] = None,
        min_interval_s: float = 0.5,
        enabled: bool = True,
        done_before: int = 0,
    ) -> None:
        """`done_before`: steps an earlier run already did (a resumed training), counted as done
        but not in the rate, so a resumed run's bar starts where the first one stopped."""
        self.stage = stage
        self.total = total
        self.unit = unit
        self.done = done_before
        self.done_before = done_before
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._extra = ""
        self._drawn_done = -1
        self._line_open = False  # a terminal line holds the bar, not yet ended by a newline
        emit(EVENT_STAGE, stage=stage, total=total, done=done_before)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def eta_s(self) -> Optional[float]:
        done_here = self.done - self.done_before
        if not self.total or done_here <= 0:
            return None
        return self.elapsed_s / done_here * (self.total - self.done)

    def set_postfix(self, text: str) -> None:
        """Extra text shown after the bar (e.g. ``loss 0.41``)."""
        self._extra = text

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        now = time.monotonic()
        last = self.total is not None and self.done >= self.total
        if last or now - self._last_draw >= self.min_interval_s or self._new_tenth():
            self._last_draw = now
            self._draw(final=False)
            emit(
                EVENT_PROGRESS,
                stage=self.stage,
                done=self.done,
                total=self.total,
                fraction=(self.done / self.total) if self.total else None,
                elapsed_s=round(self.elapsed_s, 2),
                eta_s=None if self.eta_s() is None else round(self.eta_s(), 1),
            )

    def _new_tenth(self) -> bool:
        """In a log (no terminal): whether a line is due, one per tenth of the total (and the first
        step), however fast or slow the steps come."""
        if self._interactive or not self.total:
            return False
        tenth = max(1, self.total // 10)
        return self.done // tenth > self._drawn_done // tenth

    def close(self) -> None:
        self._draw(final=True)

    def end_line(self) -> None:
        """Let other output (an epoch summary) start on a line of its own. In a terminal the bar
        redraws one line in place with a carriage return and no newline; without this, text
        printed next would be appended to the bar's line. The next draw starts a fresh line."""
        if self.enabled and self._interactive and self._line_open:
            self.stream.write("\n")
            self.stream.flush()
            self._line_open = False

    def _draw(self, final: bool) -> None:
        if not self.enabled or (final and not self._interactive and self._drawn_done == self.done):
            return
        rate = (self.done - self.done_before) / self.elapsed_s if self.elapsed_s > 0 else 0.0
        if self.total:
            width = 24
            filled = int(width * min(self.done / self.total, 1.0))
            bar = "#" * filled + "-" * (width - filled)
            text = (
                f"{self.stage}: [{bar}] {self.done}/{self.total} {self.unit} "
                f"{rate:.2f} {self.unit}/s, elapsed {format_duration(self.elapsed_s)}, "
                f"ETA {format_duration(self.eta_s())}"
            )
        else:
            text = f"{self.stage}: {self.done} {self.unit} {rate:.2f} {self.unit}/s"
        if self._extra:
            text += f", {self._extra}"
        if self._interactive:
            self.stream.write("\r" + text + ("\n" if final else ""))
            self._line_open = not final
        elif final or self.total is None or self._new_tenth():
            self.stream.write(text + "\n")
            self._drawn_done = self.done
        self.stream.flush()


def _raise_cancelled(signum: int, _frame: Any) -> None:
    raise Cancelled(f"cancelled by signal {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """Make SIGTERM raise `Cancelled` in the main thread (Ctrl-C already raises KeyboardInterrupt)."""
    signal.signal(signal.SIGTERM, _raise_cancelled)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
