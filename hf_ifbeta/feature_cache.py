"""The teacher-output cache on disk: `TeacherOutputs`, its folder, its chunk files and their checks.

Layout, under `cache_dir/<key>/` (the key hashes everything that determines the arrays, so a rerun with
different arguments lands in another folder and never mixes):

- `meta.json`: the arguments that made the cache and `"complete"`;
- `chunk_00000.npz`, ...: rows `[k * chunk_size, (k + 1) * chunk_size)`, each written atomically as it
  finishes and removed once assembled;
- `features.npy` (n, d), `logits.npy` (n, C) float32, `labels.npy` (n,) int64, `head.npz`: the assembled
  arrays, the same layout as `TeacherOutputs.save`; `meta.json` records the size, sha256 and
  modification time of each (`"files"`);
- `coverage.npy` (n, k), in the features' dtype, only in an entry whose identity asks for a coverage view
  (`"coverage"`): the teacher's middle feature stage pooled per row. Such an entry without it is damaged.

Beside the folder, `cache_dir/<key>.lock` is held while an entry is filled or repaired, so jobs that share
a cache take turns and a waiting job reuses what the other computed (see "Failure modes" in
docs/concepts.md for what the cache guarantees). The teacher pass that fills it is `hf_ifbeta.features`.
"""

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
from filelock import FileLock, Timeout

from .distributed import from_main_process
from .files import atomic_path, atomic_write

__all__ = ["CorruptCacheError", "TeacherOutputs"]

logger = logging.getLogger(__name__)

# Bump when the cached arrays change meaning: old caches then get another key instead of being reused.
CACHE_VERSION = 1
META_FILE = "meta.json"
HEAD_FILE = "head.npz"
ARRAYS = ("features", "logits", "labels")  # each saved as <name>.npy
COVERAGE = "coverage"  # the optional (n, k) array, saved as coverage.npy
# A job waiting for another one's lock tries again this often; its ranks meet at every try.
LOCK_POLL_S = 5.0


class CorruptCacheError(RuntimeError):
    """A cached file that is missing, truncated or changed since it was written; the message names it."""


@dataclass
class TeacherOutputs:
    """What the teacher says about every row of a dataset.

    Args:
        features (`np.ndarray`): (n, d) pre-logit features, float32 or float16 (see
            `compute_teacher_outputs(features_dtype=...)`); possibly a read-only `np.memmap`.
        logits (`np.ndarray`): (n, C) float32 logits.
        labels (`np.ndarray`): (n,) int64 class ids from the label column.
        head (`Tuple[np.ndarray, np.ndarray]`, *optional*): the teacher's classifier `(W (C, d), b (C,))`
            when it is a linear layer on the features, so that `logits ~= features @ W.T + b`.
        meta (`Dict[str, Any]`): cache key, teacher identity, dataset fingerprint, transform, columns,
            features dtype and source (`"pre_logits"`, or `"logits"` for a teacher without
            `forward_features` / `forward_head`); after `load`, also `cache_path`, the folder the
            arrays are mapped from (`TeacherOutputs.load(meta["cache_path"])` gets them back).
        coverage (`np.ndarray`, *optional*): (n, k) a weak view of every row for the policy's coverage term: the
            teacher's middle feature stage average-pooled to 2 x 2 (`compute_teacher_outputs(coverage_stage=True)`),
            in the features' dtype; None when not computed.
    """

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    head: Optional[Tuple[np.ndarray, np.ndarray]] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    coverage: Optional[np.ndarray] = None

    def __post_init__(self):
        lengths = {"features": len(self.features), "logits": len(self.logits), "labels": len(self.labels)}
        if self.coverage is not None:
            lengths[COVERAGE] = len(self.coverage)
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{', '.join(lengths)} must have one row per example, got lengths {lengths}.")

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def save(self, save_directory: Union[str, os.PathLike]) -> None:
        """Write `features.npy`, `logits.npy`, `labels.npy`, `head.npz` and `coverage.npy` (if any) and `meta.json`."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        for name in ARRAYS + ((COVERAGE,) if self.coverage is not None else ()):
            atomic_write(save_directory / f"{name}.npy", lambda f, a=getattr(self, name): np.save(f, a))
        if self.coverage is None:  # an earlier save's view must not come back with these arrays
            (save_directory / f"{COVERAGE}.npy").unlink(missing_ok=True)
        if self.head is not None:
            weight, bias = self.head
            atomic_write(save_directory / HEAD_FILE, lambda f: np.savez(f, weight=weight, bias=bias))
        else:
            (save_directory / HEAD_FILE).unlink(missing_ok=True)
        meta = {k: v for k, v in self.meta.items() if k != "cache_path"}  # set again by `load`
        meta["complete"] = True
        meta["files"] = _file_records(save_directory, _array_files(save_directory, meta))
        write_meta(save_directory, meta)

    @classmethod
    def load(cls, save_directory: Union[str, os.PathLike], mmap_mode: Optional[str] = "r") -> "TeacherOutputs":
        """Load what `save` wrote; arrays are memory-mapped read-only unless `mmap_mode=None`.

        Every file is first checked against the size recorded when it was written, and against its
        sha256 when its size or modification time changed since (see `_check_files`).

        Raises:
            CorruptCacheError: a file is missing, truncated or changed; the message names it and says how to clear it.
        """
        save_directory = Path(save_directory)
        meta = read_meta(save_directory)
        meta["cache_path"] = str(save_directory.resolve())
        try:
            _check_files(save_directory, meta)
            names = _arrays(save_directory, meta)
            arrays = {name: _load_array(save_directory / f"{name}.npy", mmap_mode) for name in names}
            head = None
            if (save_directory / HEAD_FILE).exists():
                with np.load(save_directory / HEAD_FILE) as npz:
                    head = (npz["weight"], npz["bias"])
        except CorruptCacheError as err:
            raise CorruptCacheError(
                f"{err} Delete the folder {save_directory} to clear it: compute_teacher_outputs (and "
                "DatasetPruner.score) then compute it again."
            ) from err
        meta.pop("files", None)  # records of this folder's files, not of the outputs (`save` writes new ones)
        return cls(**arrays, head=head, meta=meta)


def cache_key(identity: Dict[str, Any]) -> str:
    """The entry's folder name: a hash of everything that determines its arrays."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def read_meta(cache: Path) -> Dict[str, Any]:
    return json.loads((cache / META_FILE).read_text())


def write_meta(cache: Path, meta: Dict[str, Any]) -> None:
    atomic_write(cache / META_FILE, lambda f: f.write(json.dumps(meta, indent=2).encode()))


def start_entry(cache: Path, identity: Dict[str, Any], meta: Dict[str, Any]) -> bool:
    """Create the entry's folder and write `meta` (which records `identity`) unless an unfinished entry is
    there, which keeps its own meta (and chunk size). Returns whether the entry is new.

    Raises:
        ValueError: the entry there was made with another identity (a hash collision or a hand-edited folder).
    """
    cache.mkdir(parents=True, exist_ok=True)
    if (cache / META_FILE).exists():
        found = read_meta(cache)
        if found.get("identity") != identity:
            raise ValueError(
                f"The teacher-output cache at {cache} was made with other arguments ({found.get('identity')}) than "
                f"this call ({identity}). Delete that folder."
            )
        if found["chunk_size"] != meta["chunk_size"]:
            logger.warning(
                "Resuming %s with the chunk_size it started with, %d, not %d.", cache, found["chunk_size"], meta["chunk_size"]
            )
        return False
    write_meta(cache, meta)
    return True


def assemble(
    cache: Path,
    meta: Dict[str, Any],
    num_chunks: int,
    n: int,
    features_dtype: str,
    linear_head: Callable[[int], Optional[Tuple[np.ndarray, np.ndarray]]],
) -> None:
    """Stream the chunks into `features.npy`, `logits.npy`, `labels.npy` (and `coverage.npy` when the entry's
    identity asks for it), then mark the cache complete.

    `linear_head(d)` gives the teacher's classifier on the d features, saved as `head.npz`, or None.
    """
    missing = [k for k in range(num_chunks) if not (cache / chunk_name(k)).exists()]
    if missing:
        raise RuntimeError(f"Chunks {missing} of the teacher pass are missing from {cache}; did a process fail?")
    names = chunk_arrays(meta)
    with np.load(cache / chunk_name(0)) as first:
        widths = {name: first[name].shape[1] for name in names if name != "labels"}
    d, c = widths["features"], widths["logits"]
    targets = {
        "features": ((n, d), np.dtype(features_dtype)),
        "logits": ((n, c), np.dtype(np.float32)),
        "labels": ((n,), np.dtype(np.int64)),
    }
    if COVERAGE in names:
        targets[COVERAGE] = ((n, widths[COVERAGE]), np.dtype(features_dtype))
    chunk_size = meta["chunk_size"]
    # Every array is renamed into place only once every chunk has been read into it.
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(cache / f"{name}.npy")) for name in targets}
        out = {
            name: np.lib.format.open_memmap(tmp[name], mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in targets.items()
        }
        for k in range(num_chunks):
            start, stop = chunk_rows(k, chunk_size, n)
            chunk = read_chunk(cache / chunk_name(k), targets)
            if chunk["rows"].tolist() != [start, stop]:
                rows = chunk["rows"].tolist()
                raise RuntimeError(f"Chunk {k} in {cache} holds rows {rows}, expected [{start}, {stop}].")
            for name in targets:
                out[name][start:stop] = chunk[name]
        for name in targets:
            out[name].flush()
        del out
    head = linear_head(d)
    if head is not None:
        atomic_write(cache / HEAD_FILE, lambda f: np.savez(f, weight=head[0], bias=head[1]))
    meta = {**meta, "complete": True, "num_features": d, "num_classes": c, "has_head": head is not None}
    meta["files"] = _file_records(cache, _array_files(cache, meta))
    write_meta(cache, meta)
    for k in range(num_chunks):  # the assembled arrays replace the chunks (no double disk use)
        (cache / chunk_name(k)).unlink()


def is_complete(cache: Path) -> bool:
    try:
        return bool(read_meta(cache).get("complete"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False


# ----------------------------------------------------------------------------------------------------
# Chunk files


def chunk_rows(k: int, chunk_size: int, n: int) -> Tuple[int, int]:
    """Chunk k holds the rows [start, stop)."""
    return k * chunk_size, min((k + 1) * chunk_size, n)


def chunk_name(k: int) -> str:
    return f"chunk_{k:05d}.npz"


def write_chunk(
    cache: Path,
    k: int,
    features: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    coverage: Optional[np.ndarray] = None,
) -> None:
    """Write chunk `k` atomically: its arrays (`coverage` when given) and `rows`, its [start, stop)."""
    extra = {COVERAGE: coverage} if coverage is not None else {}
    atomic_write(
        cache / chunk_name(k), lambda f: np.savez(f, features=features, logits=logits, labels=labels, rows=rows, **extra)
    )


def chunk_arrays(meta: Dict[str, Any]) -> Tuple[str, ...]:
    """The arrays each chunk of an entry holds: `ARRAYS`, and `coverage` when its identity asks for a view."""
    return ARRAYS + ((COVERAGE,) if _wants_coverage(meta) else ())


def read_chunk(path: Path, names) -> Dict[str, np.ndarray]:
    """The arrays `names` and `rows` of a chunk file, read whole: zip checks each one's CRC-32, recorded
    when the chunk was written, as it reads it. A damaged chunk is removed so that a rerun computes it."""
    try:
        with np.load(path) as chunk:
            return {name: chunk[name] for name in (*names, "rows")}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        path.unlink(missing_ok=True)
        raise CorruptCacheError(
            f"Chunk file {path} is damaged ({err}); it was removed: run again to compute it anew."
        ) from err


def drop_unusable_files(cache: Path, n: int) -> None:
    """Under the lock, before a pass: remove what a rerun must not trust, naming each chunk removed.

    Temporary files are writes that never finished (a killed process). A chunk is kept only if its zip
    directory reads (a truncated file has none) and it holds its own rows; the CRC-32 of each array is
    checked later, as `assemble` reads it.
    """
    for path in cache.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    meta = read_meta(cache)
    chunk_size, names = meta["chunk_size"], chunk_arrays(meta)
    for path in sorted(cache.glob("chunk_*.npz")):
        expected = list(chunk_rows(int(path.stem.split("_")[1]), chunk_size, n))
        try:
            with np.load(path) as chunk:
                if not {*names, "rows"} <= set(chunk.files):
                    problem = f"it holds only {sorted(chunk.files)}"
                elif chunk["rows"].tolist() != expected:
                    problem = f"it holds rows {chunk['rows'].tolist()}, expected {expected}"
                else:
                    continue
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            problem = str(err)
        logger.warning("Chunk file %s is damaged (%s): removed, it is computed again.", path, problem)
        path.unlink()


# ----------------------------------------------------------------------------------------------------
# Concurrent jobs and damaged files


def from_main(value: Any, accelerator: Optional[Any]) -> Any:
    """`value` as the main process of `accelerator`'s job has it; without an accelerator, this process's
    (one job per process, taking turns through the lock)."""
    return value if accelerator is None else from_main_process(value, accelerator)


def check_shared(cache: Path, accelerator: Optional[Any]) -> None:
    """Every process must see the main process's cache folder; raise on all of them, naming it, if one does not."""
    if getattr(accelerator, "num_processes", 1) <= 1:
        return
    from accelerate.utils import gather_object

    blind = [rank for rank, sees in enumerate(gather_object([(cache / META_FILE).exists()])) if not sees]
    if blind:
        raise RuntimeError(
            f"Processes {blind} cannot see the teacher-pass cache {cache} that process 0 wrote: on several nodes, "
            "cache_dir must be a folder every node shares (PrunerConfig(cache_dir=...), --cache_dir)."
        )


@contextlib.contextmanager
def entry_lock(cache: Path, accelerator: Optional[Any]) -> Iterator[None]:
    """Hold `<cache>.lock` while this job fills or repairs the entry, so that jobs sharing a cache take turns.

    One lock per job, not per rank: the main process holds it and the job's other ranks, which share its
    chunks, never touch it. While another job holds it, the main process tries again every `LOCK_POLL_S`
    seconds and the other ranks meet it at every try, so that no collective idles past the process
    group's timeout however long the other job takes.
    """
    is_main = getattr(accelerator, "process_index", 0) == 0
    lock = None
    if is_main:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache.with_name(cache.name + ".lock")))
    waiting = False
    while True:
        acquired = False
        if lock is not None:
            try:
                lock.acquire(timeout=LOCK_POLL_S if waiting else 0)
                acquired = True
            except Timeout:
                if not waiting:
                    logger.warning(
                        "Another job is writing the teacher outputs at %s: waiting for its lock %s, then "
                        "reusing what it computed.", cache, lock.lock_file,
                    )  # fmt: skip
        waiting = True
        if from_main(acquired, accelerator):
            break
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def is_intact(cache: Path) -> bool:
    """A complete entry whose files have their recorded sizes and modification times (nothing is read)."""
    try:
        meta = read_meta(cache)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if not meta.get("complete"):
        return False
    try:
        return not _check_files(cache, meta, hash_changed=False)
    except CorruptCacheError:
        return False  # repaired under the lock, with a warning


def reuse_or_reset(cache: Path) -> bool:
    """Under the lock: whether the entry is complete and intact.

    A file whose size or modification time changed is hashed; when it still matches, its new stats are
    recorded so that later loads skip that read. A damaged entry is marked incomplete, with a warning
    naming the file, and is then computed again.
    """
    if not is_complete(cache):
        return False
    meta = read_meta(cache)
    try:
        refreshed = _check_files(cache, meta)
        for name in _arrays(cache, meta):  # files without a record (older caches): at least their header and length
            _load_array(cache / f"{name}.npy", "r")
    except CorruptCacheError as err:
        logger.warning("%s The teacher outputs in %s are computed again.", err, cache)
        meta = {k: v for k, v in meta.items() if k != "files"}
        write_meta(cache, {**meta, "complete": False})
        return False
    if refreshed:
        refreshed = {name: record or _file_record(cache / name) for name, record in refreshed.items()}
        meta["files"] = {**meta.get("files", {}), **refreshed}
        write_meta(cache, meta)
    return True


# ----------------------------------------------------------------------------------------------------
# File records: size, modification time, sha256


def _wants_coverage(meta: Dict[str, Any]) -> bool:
    return (meta.get("identity") or {}).get(COVERAGE) is not None


def _arrays(directory: Path, meta: Dict[str, Any]) -> Tuple[str, ...]:
    """The .npy arrays of a saved entry: `ARRAYS`, and `coverage` when its identity asks for it, its files record
    it or it is there (so that a missing one is named, never skipped)."""
    coverage = f"{COVERAGE}.npy"
    wanted = _wants_coverage(meta) or coverage in (meta.get("files") or {}) or (directory / coverage).exists()
    return ARRAYS + ((COVERAGE,) if wanted else ())


def _array_files(directory: Path, meta: Dict[str, Any]) -> List[str]:
    arrays = [f"{name}.npy" for name in _arrays(directory, meta)]
    return arrays + ([HEAD_FILE] if (directory / HEAD_FILE).exists() else [])


def _file_records(directory: Path, names: List[str]) -> Dict[str, Dict[str, Any]]:
    return {name: _file_record(directory / name) for name in names}


def _file_record(path: Path) -> Dict[str, Any]:
    """Size, modification time and sha256 of a file, to check it against later."""
    stat = path.stat()  # before the read: a write during it leaves the record stale, so checked again
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}


def _check_files(directory: Path, meta: Dict[str, Any], hash_changed: bool = True) -> Dict[str, Optional[Dict]]:
    """Check the arrays of a saved entry against the records in `meta["files"]`.

    Sizes are always compared: one stat per file. A sha256 costs a full read of the file, so it is
    recomputed only for a file whose size or modification time differs from its record, which any
    write to the file changes.

    Returns:
        The files whose record is stale: their stats changed but not their content (each with a fresh
        record; None with `hash_changed=False`, nothing read), or they have no record (None).

    Raises:
        CorruptCacheError: a file is missing, or has another size or (when hashed) another sha256 than recorded.
    """
    records = meta.get("files") or {}
    stale = {}
    for name in sorted(set(records) | set(_array_files(directory, meta))):
        path = directory / name
        record = records.get(name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise CorruptCacheError(f"{path} is missing.") from None
        if record is not None and stat.st_size != record["size"]:
            raise CorruptCacheError(
                f"{path} has {stat.st_size:,} bytes but {record['size']:,} were written: it was truncated or overwritten."
            )
        if record is not None and stat.st_mtime_ns == record["mtime_ns"]:
            continue
        fresh = _file_record(path) if hash_changed and record is not None else None
        if fresh is not None and fresh["sha256"] != record["sha256"]:
            raise CorruptCacheError(
                f"{path} does not match the sha256 recorded when it was written: its content changed since."
            )
        stale[name] = fresh
    return stale


def _load_array(path: Path, mmap_mode: Optional[str]) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as err:  # e.g. numpy's "mmap length is greater than file size"
        raise CorruptCacheError(f"{path} cannot be read as an array ({err}).") from err
