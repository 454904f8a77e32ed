"""Where hf_ifbeta keeps its files, and how it writes them.

Every cache (teacher outputs, decoded images, teacher logits) lives under `default_cache_dir()` unless
told otherwise, and every file a reader may open while it is written goes through `atomic_path` /
`atomic_write`: written under a temporary name beside it, then renamed over it, so that a reader sees
the old file or the new one, never half of one.
"""

import contextlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Union

__all__ = ["atomic_path", "atomic_write", "default_cache_dir", "temporary_name", "to_jsonable"]


def default_cache_dir() -> Path:
    """`$HF_HOME/hf_ifbeta` (by default `~/.cache/huggingface/hf_ifbeta`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_ifbeta"


def temporary_name(path: Union[str, os.PathLike]) -> Path:
    """`.<name>.<pid>.tmp` beside `path`: hidden, one per process, and matched by `.*.tmp` when a cache is
    cleaned of writes that never finished."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on a clean exit it is renamed over `path`.

    For writers that need a path rather than an open file (`np.lib.format.open_memmap`): close or flush
    what was written before the block ends. A block that raises (a full disk) removes the temporary
    file: it leaves nothing behind, under any name, and `path` keeps its old content.
    """
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Union[str, os.PathLike], write: Callable[[BinaryIO], Any]) -> None:
    """Write `path` through `write(file)`, a binary file open on a temporary name, then rename it over `path`.

    Example:
    ```python
    >>> atomic_write(folder / "meta.json", lambda f: f.write(json.dumps(meta).encode()))
    >>> atomic_write(folder / "features.npy", lambda f: np.save(f, features))
    ```
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)


def to_jsonable(x):
    """`x` with numpy arrays and scalars turned into lists and numbers (for JSON files and cards)."""
    if x is None:
        return None
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
