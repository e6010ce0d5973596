"""Downloading one large file over a connection that may break: the rest is asked for again.

Hospital networks and their proxies drop long transfers; a 2.5 GB SAM ViT-H checkpoint cut off
at 2 GB should not start again from zero, nor fail at once. When a connection breaks after some
bytes arrived (an error while reading, or the server closing before the length it announced),
the download asks for the rest with an HTTP range request (``Range: bytes=N-``) a few times,
waiting longer each time. A server that ignores ranges answers with the whole file (status 200
instead of 206): it is then written again from the start. An HTTP error status, or a failure
before any byte arrived (no connection at all), is not retried: it would fail the same way.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

from MaskSAMCore.errors import mib
from MaskSAMCore.progress import print_message

# Waits before each new try after a broken connection (their number is the number of retries).
RETRY_WAITS_S = (1.0, 2.0, 4.0, 8.0)
BLOCK_BYTES = 1 << 20

# What a broken or refused transfer raises: urllib's errors (URLError is an OSError), the
# socket's, and http.client's for a body cut short (IncompleteRead is no OSError).
TRANSFER_ERRORS = (OSError, http.client.HTTPException, ValueError)


class ConnectionBroken(Exception):
    """The connection ended before the file had arrived whole (the retries used up)."""

    def __init__(self, received: int, expected: Optional[int], tries: int, cause: BaseException) -> None:
        super().__init__(_reason(cause))
        self.received = received
        self.expected = expected
        self.tries = tries   # requests made, the first one included


class WriteFailed(Exception):
    """Writing to the local file failed (a full disk): never retried, never a broken connection."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class _Transfer:
    received: int = 0                # bytes of the file in the handle
    expected: Optional[int] = None   # the whole file's size, when the server said it
    arrived: bool = False            # whether this run has received any byte


def fetch(source: str, handle: BinaryIO, timeout_s: float,
          on_block: Optional[Callable[[], None]] = None,
          on_restart: Optional[Callable[[], None]] = None,
          block_bytes: int = BLOCK_BYTES, start: int = 0) -> int:
    """Write the file at URL `source` into `handle`; returns its size.

    `handle` is open for writing and holds the file's first `start` bytes (an earlier run's),
    positioned after them; with `start` > 0 the first request asks for the rest only. on_block:
    called after each block written (a progress bar); on_restart: called when the file is
    written again from the start (the bar starts over). Raises `ConnectionBroken` when the
    connection broke after some bytes arrived and the retries did not finish the file (or the
    server refused the rest with an error status), the transfer error itself (URLError,
    HTTPError, ...) when nothing arrived, and `WriteFailed` at once when `handle` cannot take a
    block.
    """
    transfer = _Transfer(received=start)
    for attempt in range(len(RETRY_WAITS_S) + 1):
        try:
            _fetch_rest(source, handle, transfer, timeout_s, on_block, on_restart, block_bytes)
            return transfer.received
        except TRANSFER_ERRORS as exc:
            if not transfer.arrived:
                raise
            # An error status when asking for the rest (say 503) would come again: not retried.
            if attempt == len(RETRY_WAITS_S) or isinstance(exc, urllib.error.HTTPError):
                raise ConnectionBroken(transfer.received, transfer.expected, attempt + 1, exc) from exc
            wait = RETRY_WAITS_S[attempt]
            print_message(f"the connection broke after {mib(transfer.received)} ({_reason(exc)}); asking for the "
                          f"rest in {wait:g} s (try {attempt + 2} of {len(RETRY_WAITS_S) + 1})")
            time.sleep(wait)
    raise AssertionError("unreachable")


def _fetch_rest(source: str, handle: BinaryIO, transfer: _Transfer, timeout_s: float,
                on_block: Optional[Callable[[], None]], on_restart: Optional[Callable[[], None]],
                block_bytes: int) -> None:
    """One request: the whole file, or (after a break) the bytes from `transfer.received` on."""
    headers = {"Range": f"bytes={transfer.received}-"} if transfer.received else {}
    with urllib.request.urlopen(urllib.request.Request(source, headers=headers), timeout=timeout_s) as response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if transfer.received and not _continues_at(response, transfer.received):
            handle.seek(0)                 # the server sent the whole file again
            handle.truncate()
            transfer.received = 0
            if on_restart is not None:
                on_restart()
        if transfer.received == 0:
            transfer.expected = length
        elif transfer.expected is None:    # going on from an earlier run's bytes
            transfer.expected = _whole_size(response)
        for block in iter(lambda: response.read(block_bytes), b""):
            try:
                handle.write(block)
            except OSError as exc:
                raise WriteFailed(exc) from exc
            transfer.received += len(block)
            transfer.arrived = True
            if on_block is not None:
                on_block()
    if transfer.expected is not None and transfer.received < transfer.expected:
        # The server closed the connection early without an error: a break like any other.
        raise http.client.IncompleteRead(b"", transfer.expected - transfer.received)


def _continues_at(response, offset: int) -> bool:
    """Whether `response` is the part of the file that starts at byte `offset` (HTTP 206)."""
    if getattr(response, "status", None) != 206:
        return False
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == offset


def _whole_size(response) -> Optional[int]:
    """The whole file's size a partial response (206) states: ``Content-Range: bytes a-b/SIZE``."""
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "the server closed it early"
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc) or type(exc).__name__
