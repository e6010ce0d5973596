"""Official Segment Anything checkpoints: registry, checksummed download, safe loading.

Checkpoints are never shipped. `download` fetches one into the cache (`MaskSAMCore.paths`) through
a partial file that becomes the cached file only after its SHA-256 matched; a connection that
breaks mid-file is resumed (`resumable_download`), and the bytes of a download that still fails,
or is cancelled, are kept for the next run to go on from (`partial_download`); one that arrives
corrupted leaves nothing in the cache. `load_sam_state_dict` reads with
``torch.load(weights_only=True)``, so a file whose unpickling would run code is refused.

Only loading needs PyTorch (imported there): the Slicer module finds checkpoints with this file in
a Slicer that has no PyTorch yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Union

from MaskSAMCore.atomic import disk_full, folders_made, no_space_error, remove_stale_temporaries, write_json
from MaskSAMCore.errors import CheckpointError, DownloadError, describe_path, mib
from MaskSAMCore.paths import SAM_CHECKPOINT_FILES, check_output_file, checkpoint_cache
from MaskSAMCore.model.partial_download import PartialFile, held_partial, partial_path
from MaskSAMCore.model.resumable_download import TRANSFER_ERRORS, ConnectionBroken, WriteFailed, fetch
from MaskSAMCore.model.weights_only import load_weights_only
from MaskSAMCore.progress import Progress, print_message

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SamCheckpointInfo:
    model_type: str
    url: str
    size_bytes: int
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
REGISTRY: Dict[str, SamCheckpointInfo] = {
    "vit_b": SamCheckpointInfo("vit_b", _BASE + SAM_CHECKPOINT_FILES["vit_b"], 375_042_383,
                               "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": SamCheckpointInfo("vit_l", _BASE + SAM_CHECKPOINT_FILES["vit_l"], 1_249_524_607,
                               "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": SamCheckpointInfo("vit_h", _BASE + SAM_CHECKPOINT_FILES["vit_h"], 2_564_550_879,
                               "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}
# Width of the patch embedding -> model type, to name the type of a checkpoint we are given.
_TYPE_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_CHUNK = 1 << 20
HASHES_FILE = "known_hashes.json"   # in the cache folder: `remembered_sha256`
KNOWN_HASHES_KEPT = 32


def file_sha256(path: Union[str, "os.PathLike[str]"]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def remembered_sha256(path: Union[str, "os.PathLike[str]"]) -> str:
    """`file_sha256` of a checkpoint given by path (``--sam-checkpoint FILE``, up to 2.5 GB, a
    second or more to hash), remembered in the cache folder by the file's identity: its resolved
    path, size, modification time (ns) and inode, as git's index does. Any write to the file
    changes its modification time, so it is hashed again; a cache folder that cannot be written
    only costs the hashing."""
    path = Path(path).resolve()
    identity = _identity(path.stat())
    store = checkpoint_cache() / HASHES_FILE
    known = _read_known_hashes(store)
    entry = known.get(str(path))
    if isinstance(entry, dict) and entry.get("identity") == identity and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_sha256(path)
    known.pop(str(path), None)
    known[str(path)] = {"identity": identity, "sha256": digest}
    with contextlib.suppress(OSError):
        write_json(store, dict(list(known.items())[-KNOWN_HASHES_KEPT:]))
    return digest


def _read_known_hashes(store: Path) -> Dict[str, object]:
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):   # none yet, or damaged: start again
        return {}
    return known if isinstance(known, dict) else {}


def info_for(model_type: str) -> SamCheckpointInfo:
    if model_type not in REGISTRY:
        raise CheckpointError(f"unknown SAM model type {model_type!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[model_type]


def cached_path(model_type: str, cache_dir: Optional[Path] = None) -> Path:
    """Where the checkpoint of `model_type` lives in the cache (it may not exist)."""
    return (cache_dir or checkpoint_cache()) / info_for(model_type).filename


def official_checkpoint(sha256: Optional[str]) -> Optional[SamCheckpointInfo]:
    """The official checkpoint with this SHA-256, or None for any other file (a fine-tuned SAM)."""
    return next((info for info in REGISTRY.values() if info.sha256 == sha256), None)


def find_cached_by_hash(sha256: str, cache_dir: Optional[Path] = None) -> Optional[Path]:
    """The checkpoint with this SHA-256, if present: the official one in the cache, or a file given
    by path before (``--sam-checkpoint FILE``: a fine-tuned SAM such as MedSAM) that is still where
    it was and unchanged since it was hashed. No big file is hashed here: the cache only holds
    files checked on download, and a remembered file counts only while its identity still holds."""
    official = official_checkpoint(sha256)
    if official is not None:
        candidate = cached_path(official.model_type, cache_dir)
        return candidate if candidate.is_file() else None
    if not sha256:
        return None
    for name, entry in reversed(list(_read_known_hashes((cache_dir or checkpoint_cache()) / HASHES_FILE).items())):
        if isinstance(entry, dict) and entry.get("sha256") == sha256 and _still_the_same(Path(name), entry):
            return Path(name)
    return None


def _identity(info: os.stat_result) -> List[int]:
    """What `remembered_sha256` keys a hash on: a changed file has another modification time, a
    replaced one another inode."""
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _still_the_same(path: Path, entry: Dict[str, object]) -> bool:
    try:
        return path.is_file() and entry.get("identity") == _identity(path.stat())
    except OSError:
        return False


def download(model_type: str, cache_dir: Optional[Path] = None, url: Optional[str] = None,
             progress: bool = True, timeout_s: float = 60.0) -> Path:
    """Download and verify an official checkpoint; returns its path in the cache.

    Already cached with the right SHA-256 -> returned without a download; a cached file that is
    damaged or incomplete (an earlier copy cut short) is downloaded again. `url` may point to a
    mirror; the hash is checked all the same. Raises DownloadError on any failure; the bytes of a
    download cut off or cancelled stay in ``NAME.partial`` for the next run (`partial_download`),
    anything else leaves nothing new in the cache.
    """
    info = info_for(model_type)
    folder = cache_dir or checkpoint_cache()
    destination = folder / info.filename
    if destination.is_file():
        if destination.stat().st_size == info.size_bytes and file_sha256(destination) == info.sha256:
            return destination
        print_message(f"{describe_path(destination)} is damaged or incomplete (not the official file); "
                      "downloading it again")
    check_output_file(destination, what="SAM checkpoint")   # before the download, not after it
    with folders_made(folder):   # a failed first download leaves no empty cache folders
        remove_stale_temporaries(folder)
        with held_partial(partial_path(destination)) as partial:
            try:
                _fetch_verified(url or info.url, partial, info, timeout_s, progress)
                partial.install(destination)
            except BaseException as exc:
                if disk_full(exc, folder):   # while the partial file still takes its space
                    partial.discard()
                    if not isinstance(exc, DownloadError):
                        raise no_space_error(destination) from None
                _say_what_is_kept(exc, partial)
                raise
    return destination


def _say_what_is_kept(exc: BaseException, partial: PartialFile) -> None:
    """A failed or cancelled download keeps the bytes that arrived: say where, and that the same
    command goes on from there (in the error line itself when there is one)."""
    kept = partial.size
    if not kept:
        return
    note = (f"the {mib(kept)} that arrived are kept in {describe_path(partial.path)}: the same command "
            "goes on from there (delete that file to start again from zero)")
    if isinstance(exc, DownloadError):
        exc.args = (f"{exc}; {note}",)
    else:
        print_message(note)


def _fetch_verified(source: str, partial: PartialFile, info: "SamCheckpointInfo", timeout_s: float,
                    progress: bool) -> None:
    """Download `source` into `partial`, going on after the bytes it holds (a broken connection
    is resumed, see `resumable_download`); `DownloadError` unless it arrived whole with the
    official SHA-256 (`partial` is then emptied)."""
    start = partial.size
    if start > info.size_bytes:
        partial.discard()   # longer than the official file: not a part of it
        start = 0
    if start:
        print_message(f"going on from the {mib(start)} of {info.filename} that an earlier download left")
    blocks = -(-(info.size_bytes - start) // _CHUNK)   # MiB blocks, the last one maybe short
    bars = [Progress(f"download {info.filename}", total=blocks, unit="MiB", enabled=progress)]

    def start_over() -> None:
        bars.append(Progress(f"download {info.filename} (again)", total=-(-info.size_bytes // _CHUNK), unit="MiB",
                             enabled=progress))

    try:
        if start < info.size_bytes:
            fetch(source, partial.handle, timeout_s, on_block=lambda: bars[-1].advance(), on_restart=start_over,
                  block_bytes=_CHUNK, start=start)
    except WriteFailed as exc:
        raise exc.cause from None   # the local disk, not the download: see `download`
    except ConnectionBroken as exc:
        whole = f" of {exc.expected}" if exc.expected is not None else ""
        raise DownloadError(f"download of {source} was cut off after {exc.received}{whole} bytes "
                            f"in {exc.tries} tries (the last: {exc})") from exc
    except TRANSFER_ERRORS as exc:
        raise DownloadError(f"download of {source} failed before any {'new ' if start else ''}byte arrived: "
                            f"{_download_failure(exc, info, partial.path.parent)}") from exc
    bars[-1].close()
    partial.handle.flush()
    digest = file_sha256(partial.path)
    if digest != info.sha256:
        partial.discard()
        raise DownloadError(
            f"download of {source} has SHA-256 {digest[:16]}..., expected "
            f"{info.sha256[:16]}... for SAM {info.model_type}; the file was discarded"
        )


def _download_failure(exc: BaseException, info: "SamCheckpointInfo", folder: Path) -> str:
    """Why the download failed and, when no connection was made (offline, a proxy, a firewall:
    the usual case in a hospital), how to get the file in another way."""
    # A URLError prints as "<urlopen error [Errno -2] Name or service not known>"; its reason is
    # the readable part. An HTTPError ("HTTP Error 404: Not Found") reads well as it is.
    plain = isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError)
    reason = str(exc.reason) if plain else str(exc)
    if not plain:
        return reason
    return (f"{reason}; without access, download {info.filename} elsewhere and put it in "
            f"{describe_path(folder)}, or give that file as the SAM checkpoint (--sam-checkpoint FILE)")


def load_sam_state_dict(path: Union[str, "os.PathLike[str]"],
                        expected_type: Optional[str] = None) -> Dict[str, "torch.Tensor"]:
    """Read an official SAM checkpoint safely and check it is the expected model type."""
    import torch

    path = Path(path)
    shown = describe_path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"SAM checkpoint {shown} {what}")
    state = load_weights_only(path, shown)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{shown} is not a Segment Anything checkpoint (not a dict of tensors)")
    embed = state.get("image_encoder.patch_embed.proj.weight")
    if embed is None:
        raise CheckpointError(f"{shown} is not a Segment Anything checkpoint (no image encoder weights)")
    found_type = _TYPE_BY_WIDTH.get(int(embed.shape[0]), f"unknown ({embed.shape[0]}-wide)")
    if expected_type is not None and expected_type != "none" and found_type != expected_type:
        raise CheckpointError(f"{shown} is a SAM {found_type} checkpoint, but this model needs SAM {expected_type}")
    return state


def run_download(args) -> int:
    """`masksam download-sam vit_b|vit_l|vit_h`."""
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else None
    url = args.url
    if url is not None and not url.strip():
        raise DownloadError("--url is empty; give an address or a file, or leave --url out for the official one")
    if url is not None and "://" not in url:
        # A file copied from elsewhere (a USB stick, a share): as a file:// address, hash checked.
        local = Path(url).expanduser()
        if not local.is_file():
            raise DownloadError(f"--url {url}: neither an address (https://..., file://...) nor an existing file")
        url = local.resolve().as_uri()
    path = download(args.model_type, cache_dir=cache, url=url)
    print(path)
    return 0
