"""What the Segment and Training tabs' jobs share: one core command run by a `JobRunner`, the
job's state, its warnings and the texts the widget shows.

The two jobs differ only in what they do before the command (write the input volumes, check
the dataset) and after it succeeded (import the label map, install the trained model). Their
life cycle is written once here so that it cannot drift apart: a job cancelled before it started
is CANCELLED for both, and both are polled by the widget's timer and by `wait` alike.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from MaskSAMSegmentLib.job_runner import JobRunner, JobState, wait_for

FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class BackgroundJob:
    """A job of the module: a subclass's `start()` hands its command to `_run`; `poll()` until
    `finished`; `cancel()` at any time.

    on_log: receives the command's output lines as they come (None: nothing is logged, and every
            warning counts as not yet logged)
    """

    def __init__(self, on_log: Optional[Callable[[str], None]] = None) -> None:
        self.on_log = on_log
        self.runner: Optional[JobRunner] = None
        self.warnings: List[str] = []
        self._warnings_logged = 0   # how many of `warnings` the log showed as they came
        self._failure: Optional[str] = None   # why the job failed after its command succeeded
        self._state = JobState.PENDING

    # -- hooks of the subclasses ------------------------------------------------------------------
    def _succeeded(self) -> JobState:
        """The work after the command succeeded (once); returns the job's final state. Runs from
        the widget's timer: a failure is reported in `_failure` and FAILED, never raised."""
        return JobState.SUCCEEDED

    def _ended(self) -> None:
        """Called once when the command failed or was cancelled (to remove temporary files)."""

    def _reworded(self, message: str) -> str:
        """A message of the core as the user should read it (private file names replaced)."""
        return message

    # -- life cycle ---------------------------------------------------------------------------
    def _run(self, runner: JobRunner) -> None:
        """Start the job's command (from the subclass's `start()`, once everything is ready)."""
        self.runner = runner
        runner.start()
        self._state = JobState.RUNNING

    def poll(self) -> JobState:
        """Advance the job: the command's output, and the work after it once it has ended."""
        if self._state is not JobState.RUNNING or self.runner is None:
            return self._state
        state = self.runner.poll()
        if state is JobState.SUCCEEDED:
            self.warnings.extend(self._reworded(warning) for warning in self.runner.warnings)
            self._warnings_logged = len(self.warnings) if self.on_log is not None else 0
            self._state = self._succeeded()
        elif state in (JobState.FAILED, JobState.CANCELLED):
            self._state = state
            self._ended()
        return self._state

    def wait(self, timeout_s: Optional[float] = None, interval_s: float = 0.05) -> JobState:
        """Poll until finished (scripts, tests and the self-test; never the GUI)."""
        return wait_for(self, timeout_s=timeout_s, interval_s=interval_s)

    def cancel(self) -> None:
        """Stop the command (it ends at a later `poll()`); a job not started yet ends at once."""
        if self._state is JobState.PENDING:
            self._state = JobState.CANCELLED
        elif self._state is JobState.RUNNING and self.runner is not None:
            self.runner.cancel()

    # -- what the widget shows ----------------------------------------------------------------
    @property
    def state(self) -> JobState:
        return self._state

    @property
    def finished(self) -> bool:
        return self._state in FINISHED_STATES

    @property
    def unlogged_warnings(self) -> List[str]:
        """The warnings the log has not shown: the core's were logged as they came, the job's
        own (found after the command) were not."""
        return self.warnings[self._warnings_logged:]

    @property
    def error_message(self) -> str:
        if self._failure:
            return self._failure
        return self._reworded(self.runner.error_message) if self.runner is not None else ""

    @property
    def log_text(self) -> str:
        return self.runner.log_text if self.runner is not None else ""

    def status_text(self) -> str:
        return self.runner.status_text() if self.runner is not None else ""
