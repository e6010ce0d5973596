"""Run one MaskSAMCore command in a background process without ever blocking the caller.

The widget calls `poll()` from a `qt.QTimer` (tests call it in a loop): it drains the output
a reader thread has queued, turns ``@masksam`` lines into events and everything else into the
log, and notices when the process has ended. `cancel()` ends the *whole process tree*: the job
is started in its own session / process group, so SIGTERM (the core turns it into a clean
`Cancelled`, removing its temporaries) and, after a grace period, SIGKILL reach the data-loader
workers too; on Windows ``taskkill /T /F`` does the same.
"""

from __future__ import annotations

import collections
import enum
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence

from MaskSAMCore.progress import parse_machine_line
from MaskSAMSegmentLib.job_progress import JobProgress

ERROR_PREFIX = "masksam: error: "
WARNING_PREFIX = "masksam: warning: "
LOGGED_WARNING_PREFIX = "Warning: "   # how the log shows a core warning (the module's own style)
CANCELLED_EXIT_CODE = 130      # the core's exit status after Ctrl-C / SIGTERM
MAX_LOG_LINES = 20000          # a long training prints far fewer; this only bounds memory
OUTPUT_DRAIN_S = 2.0           # how long output may still arrive after the process has ended


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobRunner:
    """One command line run in the background.

    command:   the full argument list (interpreter first)
    env:       the complete environment of the process (None: this process's)
    on_event:  called from `poll()` with each machine event (a dict with "event")
    on_log:    called from `poll()` with each other output line (stdout and stderr merged; the
               core's ``masksam: warning: X`` lines as ``Warning: X``)
    cancel_grace_s: how long the process may clean up after SIGTERM before SIGKILL
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        on_event: Optional[Callable[[dict], None]] = None,
        on_log: Optional[Callable[[str], None]] = None,
        cancel_grace_s: float = 10.0,
    ) -> None:
        self.command = [str(part) for part in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_event = on_event
        self.on_log = on_log
        self.cancel_grace_s = cancel_grace_s
        self.state = JobState.PENDING
        self.returncode: Optional[int] = None
        self.progress = JobProgress()
        self.events: List[dict] = []
        self.warnings: List[str] = []   # the core's warning messages, in order
        self.log_lines: Deque[str] = collections.deque(maxlen=MAX_LOG_LINES)
        self._core_error: Optional[str] = None
        self._process: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._output_finished = False
        self._cancel_requested_at: Optional[float] = None
        self._killed = False
        self._started_at: Optional[float] = None
        self._ended_at: Optional[float] = None
        self._exit_seen_at: Optional[float] = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.state is not JobState.PENDING:
            raise RuntimeError("a JobRunner runs once; make a new one")
        env = dict(self.env if self.env is not None else os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed, not in 8 KB chunks
        # The output is read as UTF-8 (below). Without this a child writes to a pipe in the
        # locale's encoding (on Windows the ANSI code page): a path in the user's profile such
        # as C:\Users\Jörg arrives garbled, and one the code page cannot encode (Иван) ends the
        # job with a UnicodeEncodeError.
        env["PYTHONIOENCODING"] = "utf-8"
        kwargs: Dict[str, object] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own process group: cancel reaches every child
        self._process = subprocess.Popen(
            self.command, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self._started_at = time.monotonic()
        self.state = JobState.RUNNING
        threading.Thread(target=self._read_output, name="masksam-job-output", daemon=True).start()

    def _read_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._lines.put(None)

    def poll(self) -> JobState:
        """Handle what the process printed since the last call; returns the (possibly new) state."""
        if self.state is not JobState.RUNNING:
            return self.state
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._output_finished = True
                break
            self._handle_line(line)
        if self._cancel_requested_at is not None and not self._killed and self._process.poll() is None:
            if time.monotonic() - self._cancel_requested_at > self.cancel_grace_s:
                self._signal_tree(kill=True)
        exited = self._process.poll() is not None
        if exited and not self._output_finished:
            self._close_orphaned_output()
        if self._output_finished and exited:
            self._finish()
        return self.state

    def wait(self, timeout_s: Optional[float] = None, interval_s: float = 0.05) -> JobState:
        """Poll until the job ends (or `timeout_s` passes); for scripts and tests, not the GUI."""
        return wait_for(self, timeout_s=timeout_s, interval_s=interval_s)

    def cancel(self) -> None:
        """Ask the whole process tree to stop (returns at once; `poll()` escalates to a kill)."""
        if self.state is JobState.PENDING:
            self.state = JobState.CANCELLED
            return
        if self.state is not JobState.RUNNING or self._cancel_requested_at is not None:
            return
        self._cancel_requested_at = time.monotonic()
        self._signal_tree(kill=os.name == "nt")

    # -- results ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    @property
    def elapsed_s(self) -> float:
        if self._started_at is None:
            return 0.0
        return (self._ended_at or time.monotonic()) - self._started_at

    @property
    def log_text(self) -> str:
        return "\n".join(self.log_lines)

    @property
    def error_message(self) -> str:
        """The core's one-line message for a failed job ("" while running or after success)."""
        if self.state is JobState.CANCELLED:
            return "cancelled"
        if self.state is not JobState.FAILED:
            return ""
        if self._core_error:
            return self._core_error
        if self.returncode is not None and self.returncode < 0:
            return killed_by_signal_message(-self.returncode)
        last = next((line for line in reversed(self.log_lines) if line.strip()), "")
        return last.strip() or f"the process exited with status {self.returncode}"

    def status_text(self) -> str:
        return self.progress.status_text(self.elapsed_s)

    def progress_fraction(self) -> Optional[float]:
        """0..1 for a progress bar, None while unknown ('busy'). A job that succeeded is complete
        even when it printed no progress at all (a download of an already cached checkpoint)."""
        return 1.0 if self.state is JobState.SUCCEEDED else self.progress.overall_fraction()

    # -- internals ----------------------------------------------------------------------------
    def _handle_line(self, line: str) -> None:
        event = parse_machine_line(line)
        if event is not None:
            self.events.append(event)
            self.progress.update(event)
            if event.get("event") == "error" and event.get("message") and not self._core_error:
                self._core_error = str(event["message"])
            if event.get("event") == "warning" and event.get("message"):
                self.warnings.append(str(event["message"]))
            if self.on_event is not None:
                self.on_event(event)
            return
        if line.startswith(ERROR_PREFIX) and not self._core_error:
            self._core_error = line[len(ERROR_PREFIX):].strip()
        if line.startswith(WARNING_PREFIX):
            # Shown once, as it comes; its `warning` event only counts it (`self.warnings`).
            line = LOGGED_WARNING_PREFIX + line[len(WARNING_PREFIX):]
        self.log_lines.append(line)
        if self.on_log is not None:
            self.on_log(line)

    def _close_orphaned_output(self) -> None:
        """The process has ended but its output is still open: a child it started (a data-loader
        worker after a crash or an out-of-memory kill) inherited the pipe. Such orphans are
        killed after a short drain, so the job ends instead of waiting for them."""
        now = time.monotonic()
        if self._exit_seen_at is None:
            self._exit_seen_at = now
        waited = now - self._exit_seen_at
        if waited > OUTPUT_DRAIN_S and not self._killed:
            self._signal_tree(kill=True)
        elif waited > 2 * OUTPUT_DRAIN_S:
            self._output_finished = True   # (Windows) the orphans could not be reached: stop reading

    def _finish(self) -> None:
        self.returncode = self._process.returncode
        self._ended_at = time.monotonic()
        if self._cancel_requested_at is not None:
            self.state = JobState.CANCELLED
        elif self.returncode == 0:
            self.state = JobState.SUCCEEDED
        elif self.returncode == CANCELLED_EXIT_CODE:
            self.state = JobState.CANCELLED   # stopped from outside (a terminal, a scheduler)
        else:
            self.state = JobState.FAILED
        if os.name != "nt":
            # Workers that outlived the main process (they should not) go with it.
            self._signal_tree(kill=True)

    def _signal_tree(self, kill: bool) -> None:
        process = self._process
        if process is None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/PID", str(process.pid), "/T", "/F"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            self._killed = True
            return
        try:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already
        if kill:
            self._killed = True


def stop_jobs(jobs, timeout_s: float = 15.0, interval_s: float = 0.05) -> None:
    """Cancel every job (None entries are skipped) and poll them until all have ended or
    `timeout_s` has passed. For Slicer's exit and module reloads: a job only removes its
    temporary files (a segmentation's copy of the patient's volume) when it is polled to its
    end, and `JobRunner.poll` escalates to SIGKILL after its grace period."""
    jobs = [job for job in jobs if job is not None]
    for job in jobs:
        job.cancel()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = [job.poll() for job in jobs]   # every job, not only up to the first running one
        if JobState.RUNNING not in states:
            return
        time.sleep(interval_s)


def killed_by_signal_message(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    reason = " (the system may have run out of memory)" if name == "SIGKILL" else ""
    return f"the MaskSAM process was killed by {name}{reason}"


def wait_for(job, on_tick: Optional[Callable[[], None]] = None, timeout_s: Optional[float] = None,
             interval_s: float = 0.05, cancel_on_timeout: bool = False) -> JobState:
    """Poll `job` (anything with `poll()` returning a JobState, and `cancel()`) until it ends.

    on_tick: called between polls (in Slicer: ``slicer.app.processEvents`` keeps the GUI alive)
    timeout_s: stop waiting after this long; with `cancel_on_timeout` the job is cancelled and
               waited for, otherwise it keeps running and RUNNING is returned
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (state := job.poll()) is JobState.RUNNING:
        if deadline is not None and time.monotonic() > deadline:
            if not cancel_on_timeout:
                return state
            job.cancel()
            deadline = None
        if on_tick is not None:
            on_tick()
        time.sleep(interval_s)
    return state
