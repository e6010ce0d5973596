"""SAM checkpoint download (against a local HTTP server) and safe loading of checkpoints."""

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from MaskSAMCore.errors import CheckpointError, DownloadError, describe_path
from MaskSAMCore.model import sam_checkpoints
from MaskSAMCore.model.sam_checkpoints import SamCheckpointInfo, download, load_sam_state_dict
from MaskSAMCore.model_folder import load_checkpoint, save_checkpoint

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)


REQUESTS = []   # (path, Range header) of every request the server answered


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def _send_a_third_and_hang_up(self):
        """Promises the whole file, sends a third of it, hangs up: a proxy dropping the transfer."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
        self.wfile.flush()
        self.connection.shutdown(2)

    def do_GET(self):
        asked_range = self.headers.get("Range")
        REQUESTS.append((self.path, asked_range))
        if self.path == "/cut.pth" or (self.path.startswith("/flaky") and asked_range is None):
            self._send_a_third_and_hang_up()
            return
        if self.path == "/flaky.pth":   # serves ranges: the rest of the file from the byte asked for
            start = int(asked_range.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            self.send_header("Content-Length", str(len(PAYLOAD) - start))
            self.end_headers()
            self.wfile.write(PAYLOAD[start:])
            return
        if self.path == "/flaky_then_down.pth":   # the rest is refused: the server went down meanwhile
            self.send_error(503)
            return
        if self.path == "/flaky_without_ranges.pth":   # ignores the Range header: the whole file again
            self.path = "/sam.pth"
        payload = {"/sam.pth": PAYLOAD, "/two_mib.pth": PAYLOAD[:2 << 20]}.get(self.path)
        if payload is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def registry(monkeypatch, server):
    info = SamCheckpointInfo("vit_b", server + "/sam.pth", len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(sam_checkpoints.REGISTRY, "vit_b", info)
    return info


def _cache_files(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_right_hash_is_installed(registry, tmp_path):
    path = download("vit_b", cache_dir=tmp_path, progress=False)
    assert path == tmp_path / "sam.pth"
    assert path.read_bytes() == PAYLOAD
    assert _cache_files(tmp_path) == ["sam.pth"]
    assert sam_checkpoints.find_cached_by_hash(registry.sha256, tmp_path) == path


@pytest.mark.parametrize("name, size", [("sam.pth", len(PAYLOAD)), ("two_mib.pth", 2 << 20)])
def test_a_download_shows_its_progress_up_to_the_whole_file(server, tmp_path, capsys, monkeypatch, name, size):
    """375 MB to 2.5 GB take minutes: a person sees the bar fill (stderr), the Slicer module's
    Training tab gets the same steps as machine lines (stdout), both ending at the whole file
    (also when it is a whole number of MiB)."""
    from MaskSAMCore import progress
    from MaskSAMCore.progress import parse_machine_line

    payload = PAYLOAD[:size]
    monkeypatch.setitem(sam_checkpoints.REGISTRY, "vit_b", SamCheckpointInfo(
        "vit_b", f"{server}/{name}", size, hashlib.sha256(payload).hexdigest()))
    monkeypatch.setattr(progress, "_machine_lines", True)   # what --machine-progress switches on
    download("vit_b", cache_dir=tmp_path)
    said = capsys.readouterr()
    mebibytes = -(-size // (1 << 20))   # 3 MiB and 123 bytes: 4 blocks; 2 MiB: 2
    bars = said.err.splitlines()
    assert [line.split("] ")[1].split(" ")[0] for line in bars] == [f"{n}/{mebibytes}" for n in range(1, mebibytes + 1)]
    assert all(line.startswith(f"download {name}: [") for line in bars)
    assert bars[-1].startswith(f"download {name}: [" + "#" * 24 + "] ")
    events = [event for event in map(parse_machine_line, said.out.splitlines()) if event is not None]
    assert events[0] == {"event": "stage", "stage": f"download {name}", "total": mebibytes, "done": 0}
    steps = [event for event in events if event["event"] == "progress"]
    assert [event["done"] for event in steps] == list(range(1, mebibytes + 1))
    assert steps[-1]["fraction"] == 1.0


def test_a_long_download_logs_a_line_per_tenth_and_its_last_line_is_the_whole_file(server, tmp_path, capsys,
                                                                                   monkeypatch):
    """Without a terminal (the Slicer log, a batch job) the bar writes one line per tenth: the
    last block rarely starts a tenth, and the log must still end at the whole file."""
    monkeypatch.setattr(sam_checkpoints, "_CHUNK", 1 << 16)   # 49 blocks of 64 KiB, as a real file has hundreds
    monkeypatch.setitem(sam_checkpoints.REGISTRY, "vit_b", SamCheckpointInfo(
        "vit_b", f"{server}/sam.pth", len(PAYLOAD), hashlib.sha256(PAYLOAD).hexdigest()))
    download("vit_b", cache_dir=tmp_path)
    counts = [line.split("] ")[1].split(" ")[0] for line in capsys.readouterr().err.splitlines()]
    assert len(counts) <= 14 and counts[-1] == "49/49"


def test_a_damaged_file_in_the_cache_is_downloaded_again(registry, tmp_path, capsys):
    """A copy cut short earlier must not stay "cached" for ever (training would call it corrupt)."""
    (tmp_path / "sam.pth").write_bytes(PAYLOAD[: len(PAYLOAD) // 2])
    path = download("vit_b", cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and _cache_files(tmp_path) == ["sam.pth"]
    assert "sam.pth is damaged or incomplete" in capsys.readouterr().err
    assert download("vit_b", cache_dir=tmp_path, progress=False) == path   # intact: no second download
    assert capsys.readouterr().err == ""


def test_wrong_hash_leaves_nothing(monkeypatch, registry, tmp_path):
    bad = SamCheckpointInfo("vit_b", registry.url, registry.size_bytes, "0" * 64)
    monkeypatch.setitem(sam_checkpoints.REGISTRY, "vit_b", bad)
    with pytest.raises(DownloadError, match="has SHA-256 .* expected 0000"):
        download("vit_b", cache_dir=tmp_path, progress=False)
    assert _cache_files(tmp_path) == []


@pytest.fixture
def no_waits(monkeypatch):
    from MaskSAMCore.model import resumable_download

    monkeypatch.setattr(resumable_download, "RETRY_WAITS_S", (0.0, 0.0, 0.0, 0.0))
    REQUESTS.clear()


def test_a_download_cut_off_for_good_keeps_its_bytes_and_the_next_run_goes_on_from_there(
        registry, server, tmp_path, no_waits, capsys):
    third = len(PAYLOAD) // 3
    with pytest.raises(DownloadError) as raised:
        download("vit_b", cache_dir=tmp_path, url=server + "/cut.pth", progress=False)
    assert str(raised.value) == (
        f"download of {server}/cut.pth was cut off after {third} of {len(PAYLOAD)} bytes in 5 tries (the last: "
        f"the server closed it early); the 1.0 MiB that arrived are kept in {describe_path(tmp_path)}/sam.pth.partial: "
        "the same command goes on from there (delete that file to start again from zero)")
    assert len(REQUESTS) == 5
    assert _cache_files(tmp_path) == ["sam.pth.partial"] and (tmp_path / "sam.pth.partial").read_bytes() == \
        PAYLOAD[:third]
    capsys.readouterr()
    REQUESTS.clear()

    path = download("vit_b", cache_dir=tmp_path, url=server + "/flaky.pth", progress=False)   # a later run

    assert path.read_bytes() == PAYLOAD and _cache_files(tmp_path) == ["sam.pth"]
    assert REQUESTS == [("/flaky.pth", f"bytes={third}-")]   # only the rest was asked for
    assert "masksam: going on from the 1.0 MiB of sam.pth that an earlier download left" in capsys.readouterr().err


def test_kept_bytes_that_are_not_the_files_are_found_out_by_the_hash_and_discarded(registry, server, tmp_path):
    (tmp_path / "sam.pth.partial").write_bytes(os.urandom(len(PAYLOAD) // 3))   # another file's start
    with pytest.raises(DownloadError, match="has SHA-256 .*; the file was discarded$"):
        download("vit_b", cache_dir=tmp_path, url=server + "/flaky.pth", progress=False)
    assert _cache_files(tmp_path) == []
    assert download("vit_b", cache_dir=tmp_path, url=server + "/flaky.pth", progress=False).read_bytes() == PAYLOAD


def test_kept_bytes_from_a_server_that_ignores_ranges_are_written_again_from_the_start(registry, server, tmp_path,
                                                                                      no_waits):
    (tmp_path / "sam.pth.partial").write_bytes(PAYLOAD[:1000])
    path = download("vit_b", cache_dir=tmp_path, url=server + "/sam.pth", progress=False)   # answers 200
    assert path.read_bytes() == PAYLOAD and _cache_files(tmp_path) == ["sam.pth"]
    assert REQUESTS == [("/sam.pth", "bytes=1000-")]


@pytest.mark.skipif(os.name == "nt", reason="downloads are locked with flock (POSIX)")
def test_a_second_download_of_the_same_file_at_once_is_refused(registry, server, tmp_path):
    from MaskSAMCore.model.partial_download import held_partial

    with held_partial(tmp_path / "sam.pth.partial"):   # what a running download holds
        with pytest.raises(DownloadError, match=r"sam.pth is being downloaded by another masksam process; "
                                                "wait for it to end$"):
            download("vit_b", cache_dir=tmp_path, progress=False)
    assert _cache_files(tmp_path) == []   # the running one had written nothing yet


def test_a_cancelled_download_keeps_its_bytes_and_says_so(registry, server, tmp_path, monkeypatch, capsys):
    from MaskSAMCore.model import resumable_download

    real_fetch_rest = resumable_download._fetch_rest

    def cancelled_after_a_mebibyte(source, handle, transfer, *rest):
        handle.write(PAYLOAD[: 1 << 20])
        raise KeyboardInterrupt

    monkeypatch.setattr(resumable_download, "_fetch_rest", cancelled_after_a_mebibyte)
    with pytest.raises(KeyboardInterrupt):
        download("vit_b", cache_dir=tmp_path, progress=False)
    assert (tmp_path / "sam.pth.partial").read_bytes() == PAYLOAD[: 1 << 20]
    assert f"masksam: the 1.0 MiB that arrived are kept in {describe_path(tmp_path)}/sam.pth.partial" in \
        capsys.readouterr().err
    monkeypatch.setattr(resumable_download, "_fetch_rest", real_fetch_rest)
    assert download("vit_b", cache_dir=tmp_path, url=server + "/flaky.pth", progress=False).read_bytes() == PAYLOAD


def test_a_connection_broken_mid_file_is_resumed_where_it_broke(registry, server, tmp_path, no_waits, capsys):
    path = download("vit_b", cache_dir=tmp_path, url=server + "/flaky.pth", progress=False)
    assert path.read_bytes() == PAYLOAD and _cache_files(tmp_path) == ["sam.pth"]
    assert REQUESTS == [("/flaky.pth", None), ("/flaky.pth", f"bytes={len(PAYLOAD) // 3}-")]
    said = capsys.readouterr().err
    assert "masksam: the connection broke after 1.0 MiB (the server closed it early); asking for the rest" in said


def test_an_error_status_for_the_rest_is_not_asked_again(registry, server, tmp_path, no_waits):
    with pytest.raises(DownloadError, match=rf"cut off after {len(PAYLOAD) // 3} of {len(PAYLOAD)} bytes "
                                            r"in 2 tries \(the last: Service Unavailable\)"):
        download("vit_b", cache_dir=tmp_path, url=server + "/flaky_then_down.pth", progress=False)
    assert len(REQUESTS) == 2 and _cache_files(tmp_path) == ["sam.pth.partial"]   # for a later run


def test_a_server_that_ignores_ranges_sends_the_file_again_from_the_start(registry, server, tmp_path, no_waits):
    path = download("vit_b", cache_dir=tmp_path, url=server + "/flaky_without_ranges.pth", progress=False)
    assert path.read_bytes() == PAYLOAD and _cache_files(tmp_path) == ["sam.pth"]
    assert [asked for _, asked in REQUESTS] == [None, f"bytes={len(PAYLOAD) // 3}-"]


def test_failed_first_download_leaves_no_empty_cache_folders(registry, server, tmp_path):
    cache = tmp_path / "home" / ".cache" / "masksam" / "sam"
    with pytest.raises(DownloadError, match="failed"):
        download("vit_b", cache_dir=cache, url=server + "/missing.pth", progress=False)
    assert _cache_files(tmp_path) == []  # the folders it made are gone, the one it found stays
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("x")
    with pytest.raises(DownloadError, match="failed"):
        download("vit_b", cache_dir=tmp_path / "keep", url=server + "/missing.pth", progress=False)
    assert _cache_files(tmp_path / "keep") == ["mine.txt"]


def test_cli_download_with_wrong_hash_is_one_line_and_exit_1(server, tmp_path):
    # the real registry's hash cannot match our random payload
    result = subprocess.run(
        [sys.executable, "-m", "MaskSAMCore", "download-sam", "vit_b", "--cache-dir", str(tmp_path),
         "--url", server + "/sam.pth"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("masksam:")]
    assert len(lines) == 1 and "SHA-256" in lines[0], result.stderr
    assert _cache_files(tmp_path) == []


def test_cli_copies_a_local_file_given_as_url_and_checks_its_hash(registry, tmp_path, monkeypatch, capsys):
    """Offline hospitals carry the checkpoint on a stick: a plain path works like a file:// address."""
    from MaskSAMCore.cli import main

    copy = tmp_path / "stick" / "sam_vit_b_01ec64.pth"
    copy.parent.mkdir()
    copy.write_bytes(PAYLOAD)
    monkeypatch.chdir(tmp_path)
    assert main(["download-sam", "vit_b", "--cache-dir", str(tmp_path / "cache"), "--url",
                 "stick/sam_vit_b_01ec64.pth"]) == 0
    assert (tmp_path / "cache" / "sam.pth").read_bytes() == PAYLOAD
    capsys.readouterr()
    assert main(["download-sam", "vit_b", "--cache-dir", str(tmp_path / "other"), "--url", "stick/none.pth"]) == 1
    assert "--url stick/none.pth: neither an address (https://..., file://...) nor an existing file" in \
        capsys.readouterr().err
    assert main(["download-sam", "vit_b", "--cache-dir", str(tmp_path / "other"), "--url", ""]) == 1
    assert "--url is empty" in capsys.readouterr().err   # not a silent download from the official address


class _RunsCode:
    """Unpickling this calls a function with side effects — what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
                "payload": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="could run code; refusing"):
        load_sam_state_dict(evil)
    with pytest.raises(CheckpointError, match="could run code; refusing"):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"<html><body>404 Not Found</body></html>\n", bytes(range(7, 107))])
def test_a_file_that_is_no_checkpoint_at_all_is_not_called_dangerous(tmp_path, content):
    """An error page saved as the download, or random bytes: 'get the file again', not a code warning."""
    path = tmp_path / "sam.pth"
    path.write_bytes(content)
    for load in (load_sam_state_dict, load_checkpoint):
        with pytest.raises(CheckpointError) as raised:
            load(path)
        assert str(raised.value) == (f"{describe_path(path)} is not a PyTorch checkpoint (damaged, or another kind "
                                     "of file saved under its name, such as a web page); get the file again")


def test_masksam_checkpoint_round_trip_and_errors(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"weights": {"a": torch.ones(2)}, "epoch": 3})
    payload = load_checkpoint(path)
    assert payload["epoch"] == 3 and torch.equal(payload["weights"]["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": {}}, other)
    with pytest.raises(CheckpointError, match="not a MaskSAM checkpoint"):
        load_checkpoint(other)


def test_no_connection_says_why_and_how_to_get_the_file_another_way(registry, tmp_path):
    # a port nothing listens on: what an offline machine or a blocking firewall looks like
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache = tmp_path / "sam_checkpoints"
    with pytest.raises(DownloadError) as error:
        download("vit_b", cache_dir=cache, url=f"http://127.0.0.1:{port}/sam.pth", progress=False)
    message = str(error.value)
    assert "<urlopen error" not in message and "failed before any byte arrived" in message
    assert f"download sam.pth elsewhere and put it in {describe_path(cache)}" in message   # '~/...' under $HOME
    assert "--sam-checkpoint FILE" in message
    assert _cache_files(tmp_path) == []


def test_an_http_error_keeps_its_status_and_gives_no_offline_advice(registry, server, tmp_path):
    with pytest.raises(DownloadError) as error:
        download("vit_b", cache_dir=tmp_path, url=server + "/missing.pth", progress=False)
    assert "HTTP Error 404" in str(error.value) and "elsewhere" not in str(error.value)


def test_a_long_loading_error_is_cut_at_a_sentence_not_inside_a_word():
    from MaskSAMCore.model.weights_only import describe_load_failure

    error = RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory. "
                         "This is an internal miniz error. If you see this, please report it with the file, "
                         "the version of PyTorch and the platform you are on, so that it can be looked at")
    said = describe_load_failure("sam.pth", error)
    assert said.endswith("(PytorchStreamReader failed reading zip archive: failed finding central directory. "
                         "This is an internal miniz error.)"), said


def test_a_given_checkpoint_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    """--sam-checkpoint FILE (up to 2.5 GB) is hashed at the first run only; a changed file again."""
    monkeypatch.setenv("MASKSAM_HOME", str(tmp_path / "home"))
    hashed = []
    real = sam_checkpoints.file_sha256
    monkeypatch.setattr(sam_checkpoints, "file_sha256", lambda path: hashed.append(Path(path)) or real(path))
    checkpoint = tmp_path / "sam.pth"
    checkpoint.write_bytes(b"a" * 1000)
    first = hashlib.sha256(b"a" * 1000).hexdigest()
    assert sam_checkpoints.remembered_sha256(checkpoint) == first and len(hashed) == 1
    assert sam_checkpoints.remembered_sha256(tmp_path / "." / "sam.pth") == first and len(hashed) == 1
    checkpoint.write_bytes(b"b" * 1000)   # same size, new contents
    info = checkpoint.stat()
    os.utime(checkpoint, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))   # a coarse clock
    assert sam_checkpoints.remembered_sha256(checkpoint) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(hashed) == 2
    store = tmp_path / "home" / "sam_checkpoints" / sam_checkpoints.HASHES_FILE
    store.write_text("{damaged")
    assert sam_checkpoints.remembered_sha256(checkpoint) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(hashed) == 3 and sam_checkpoints.remembered_sha256(checkpoint) and len(hashed) == 3


def test_a_full_disk_during_a_download_is_said_at_once_not_retried_as_a_broken_connection(
        registry, server, tmp_path, no_waits, monkeypatch):
    import errno

    class FillsUp:
        """The download's file on a disk with room for one MiB block."""

        def __init__(self, handle):
            self.handle = handle
            self.written = 0

        def write(self, block):
            if self.written:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += self.handle.write(block)
            return len(block)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    real_fetch = sam_checkpoints.fetch
    monkeypatch.setattr(sam_checkpoints, "fetch",
                        lambda source, handle, *rest, **options: real_fetch(source, FillsUp(handle), *rest, **options))
    with pytest.raises(OSError) as raised:
        download("vit_b", cache_dir=tmp_path, url=server + "/sam.pth", progress=False)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "sam.pth")
    assert "no space left on the device" in str(raised.value)
    assert _cache_files(tmp_path) == [] and len(REQUESTS) == 1
