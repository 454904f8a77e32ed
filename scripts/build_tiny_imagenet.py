"""Tiny-ImageNet as parquet (`img` JPEG bytes as they are, `label` ClassLabel over the wnids), outside git.

Reads the Tiny-ImageNet copy of the public GitHub repository rangeetpan/IMagenet (folder
`tiny-imagenet-200/`: `wnids.txt`, `words.txt`, `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` labelled
by `val/val_annotations.txt`; the unlabelled `test/` folder is not used) and writes

    <out>/train.parquet   one row per training image (500 per class)
    <out>/test.parquet    the labelled `val` folder, used as the test split
    <out>/meta.json       source (commit or folder), file counts, classes and their words

The source is a bare mirror (a git directory: blobs are read with `git cat-file`, nothing is checked out),
a clone, or an extracted folder; `--mirror` may point at the repository or at `tiny-imagenet-200/` itself.
Rows are the sorted file list in a fixed random order (seed 0), as the CIFAR-10 copy is pre-shuffled, so
that any prefix holds every class. Every image is decoded once to check it. A rerun with the same source
and file counts does nothing; outputs are written under temporary names and renamed, `meta.json` last.

    git clone --bare https://github.com/rangeetpan/IMagenet.git /data/IMagenet.git   # or any checkout
    python scripts/build_tiny_imagenet.py --mirror /data/IMagenet.git
    python -c "import datasets; print(datasets.load_dataset('parquet', data_files={
        'train': 'benchmarks/cache/tiny_imagenet/train.parquet'})['train'])"
"""

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "cache" / "tiny_imagenet"
# Where the `fetch` of github:rangeetpan/IMagenet leaves its bare copy, then a clone beside the repository.
DEFAULT_MIRRORS = (Path("/work/.mirror/rangeetpan+IMagenet/repo"), ROOT.parent / "IMagenet")
DATASET_DIR = "tiny-imagenet-200"
SPLIT_SEED = 0
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- sources
class GitSource:
    """Files of a git directory's `rev` (bare or not), read from the object store."""

    def __init__(self, git_dir: Path, rev: str = "HEAD"):
        self.git_dir = git_dir
        self.commit = self._git("rev-parse", f"{rev}^{{commit}}").decode().strip()
        listing = self._git("ls-tree", "-r", "-z", "--full-tree", self.commit)
        self._blobs = {}
        for entry in filter(None, listing.split(b"\0")):
            meta, path = entry.split(b"\t", 1)
            mode, kind, sha = meta.split()
            if kind == b"blob":
                self._blobs[path.decode()] = sha.decode()
        self._cat = None

    def _git(self, *args) -> bytes:
        return subprocess.run(["git", f"--git-dir={self.git_dir}", *args], check=True, capture_output=True).stdout

    def describe(self) -> str:
        return f"git directory {self.git_dir} at {self.commit}"

    def paths(self) -> List[str]:
        return list(self._blobs)

    def read(self, path: str) -> bytes:
        if self._cat is None:
            command = ["git", f"--git-dir={self.git_dir}", "cat-file", "--batch"]
            self._cat = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._cat.stdin.write(self._blobs[path].encode() + b"\n")
        self._cat.stdin.flush()
        header = self._cat.stdout.readline().split()  # <sha> blob <size>
        data = self._cat.stdout.read(int(header[2]))
        self._cat.stdout.read(1)  # the newline after the contents
        return data

    def close(self):
        if self._cat is not None:
            self._cat.stdin.close()
            self._cat.wait()
            self._cat = None


class FolderSource:
    """Files under a folder (a checkout or an extracted archive)."""

    def __init__(self, root: Path):
        self.root = root
        self.commit = None

    def describe(self) -> str:
        return f"folder {self.root}"

    def paths(self) -> List[str]:
        return [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def close(self):
        pass


def open_source(mirror: Optional[Path]):
    """The source at `mirror`, or the first default location that exists; a clear error otherwise."""
    candidates = [Path(mirror)] if mirror is not None else list(DEFAULT_MIRRORS)
    for path in candidates:
        if not path.exists():
            continue
        if (path / "HEAD").is_file() and (path / "objects").is_dir():
            return GitSource(path)
        return FolderSource(path)
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"No Tiny-ImageNet source at {tried}. Fetch the public repository rangeetpan/IMagenet "
        "(`git clone --bare https://github.com/rangeetpan/IMagenet.git <dir>`) and pass `--mirror <dir>`; "
        f"an extracted `{DATASET_DIR}/` folder works too."
    )


# ----------------------------------------------------------------------------- layout
def natural_key(name: str):
    """`val_10.JPEG` after `val_9.JPEG`: digit runs compare as numbers."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def find_layout(paths: List[str], where: str) -> Dict:
    """The dataset's files by role, checked: every missing folder or file is named in the error."""
    wnids_files = sorted((p for p in paths if p == "wnids.txt" or p.endswith("/wnids.txt")), key=len)
    if not wnids_files:
        raise FileNotFoundError(f"No `wnids.txt` in {where}: expected `{DATASET_DIR}/wnids.txt` (or `wnids.txt`).")
    prefix = wnids_files[0][: -len("wnids.txt")]
    rel = {p[len(prefix):]: p for p in paths if p.startswith(prefix)}
    base = f"{where} under `{prefix or './'}`"
    train = [r for r in rel if r.startswith("train/")]
    if not train:
        raise FileNotFoundError(f"No `train/` folder in {base}: expected `train/<wnid>/images/*.JPEG`.")
    for name in ("val/val_annotations.txt", "words.txt"):
        if name not in rel:
            raise FileNotFoundError(f"No `{name}` in {base}.")
    val_images = [r for r in rel if r.startswith("val/images/") and r.lower().endswith(".jpeg")]
    if not val_images:
        raise FileNotFoundError(f"No `val/images/*.JPEG` in {base}.")
    return {"prefix": prefix, "rel": rel, "train": train, "val_images": val_images}


def read_text(source, path: str) -> str:
    return source.read(path).decode("utf-8")


def collect(source, layout: Dict) -> Tuple[List[str], Dict[str, str], Dict[str, List[Tuple[str, int]]]]:
    """(wnids sorted, words per wnid, {"train": [(path, label)], "test": [(path, label)]}) in sorted file order."""
    rel, prefix = layout["rel"], layout["prefix"]
    wnids = sorted(set(read_text(source, rel["wnids.txt"]).split()))
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    for line in read_text(source, rel["words.txt"]).splitlines():
        wnid, _, text = line.partition("\t")
        if wnid in index:
            words[wnid] = text.strip()

    train: Dict[str, List[str]] = {w: [] for w in wnids}
    for r in layout["train"]:
        parts = r.split("/")  # train/<wnid>/images/<file>.JPEG
        if len(parts) == 4 and parts[2] == "images" and parts[3].lower().endswith(".jpeg"):
            if parts[1] not in index:
                raise ValueError(f"Training folder `{prefix}train/{parts[1]}` is not a class of `{prefix}wnids.txt`.")
            train[parts[1]].append(r)
    empty = [w for w, files in train.items() if not files]
    if empty:
        raise FileNotFoundError(
            f"No images in `{prefix}train/<wnid>/images/` for {len(empty)} classes of `{prefix}wnids.txt`: {empty[:5]}"
        )
    train_rows = [(rel[r], index[w]) for w in wnids for r in sorted(train[w], key=natural_key)]

    annotations = {}
    for n, line in enumerate(read_text(source, rel["val/val_annotations.txt"]).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"`{prefix}val/val_annotations.txt` line {n}: expected '<file>\\t<wnid>\\t...' with a wnid of "
                f"wnids.txt, got {line!r}."
            )
        annotations[fields[0]] = fields[1]
    files = {r.split("/", 2)[2]: r for r in layout["val_images"]}
    unlabelled = sorted(set(files) - set(annotations), key=natural_key)
    missing = sorted(set(annotations) - set(files), key=natural_key)
    if unlabelled or missing:
        raise ValueError(
            f"`{prefix}val/images/` and `val/val_annotations.txt` disagree: {len(unlabelled)} images without a "
            f"label {unlabelled[:5]}, {len(missing)} labelled files missing {missing[:5]}."
        )
    test_rows = [(rel[files[f]], index[annotations[f]]) for f in sorted(files, key=natural_key)]
    return wnids, words, {"train": train_rows, "test": test_rows}


# ----------------------------------------------------------------------------- writing
def check_image(data: bytes, path: str) -> str:
    """Decode `data` fully; returns the PIL mode. Names the file when it is not a readable image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.mode
    except Exception as err:  # PIL raises several types for corrupt files
        raise ValueError(f"{path} does not decode as an image: {type(err).__name__}: {err}") from err


def write_split(source, rows: List[Tuple[str, int]], wnids: List[str], out: Path, prefix: str, seed: int) -> Dict:
    import datasets

    order = np.random.default_rng(seed).permutation(len(rows))
    images, labels, modes = [], [], {}
    for k in order:
        path, label = rows[k]
        data = source.read(path)
        mode = check_image(data, path)
        modes[mode] = modes.get(mode, 0) + 1
        images.append({"bytes": data, "path": path[len(prefix):]})
        labels.append(label)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=wnids)})
    ds = datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)
    tmp = out.with_name(out.name + ".tmp")
    ds.to_parquet(str(tmp))
    os.replace(tmp, out)
    return {"rows": len(rows), "modes": modes, "bytes": out.stat().st_size}


def build(mirror: Optional[Path] = None, out_dir: Path = DEFAULT_OUT, force: bool = False, log=print) -> Dict:
    """Write `train.parquet`, `test.parquet` and `meta.json` under `out_dir` (skipped when up to date)."""
    source = open_source(mirror)
    try:
        layout = find_layout(source.paths(), source.describe())
        counts = {"train_files": len(layout["train"]), "val_images": len(layout["val_images"])}
        meta_path = out_dir / "meta.json"
        if meta_path.exists() and not force:
            meta = json.loads(meta_path.read_text())
            same = meta.get("format") == FORMAT_VERSION and meta.get("commit") == source.commit
            same = same and meta.get("file_counts") == counts
            if same and all((out_dir / f"{s}.parquet").exists() for s in ("train", "test")):
                log(f"up to date: {out_dir} ({source.describe()})")
                return meta
        wnids, words, splits = collect(source, layout)
        out_dir.mkdir(parents=True, exist_ok=True)
        if meta_path.exists():
            meta_path.unlink()  # the parquet files are replaced below: the old record no longer describes them
        t0 = time.perf_counter()
        written = {}
        for split, rows in splits.items():
            out = out_dir / f"{split}.parquet"
            written[split] = write_split(source, rows, wnids, out, layout["prefix"], SPLIT_SEED)
            log(f"{split}: {len(rows)} rows, {written[split]['bytes'] / 2**20:.1f} MiB, modes {written[split]['modes']}")
        meta = {
            "format": FORMAT_VERSION,
            "source": source.describe(),
            "commit": source.commit,
            "file_counts": counts,
            "num_classes": len(wnids),
            "splits": written,
            "test_split_from": "val/images + val/val_annotations.txt",
            "row_order": f"sorted classes and files, then a fixed permutation (numpy default_rng({SPLIT_SEED}))",
            "classes": wnids,
            "words": [words.get(w, "") for w in wnids],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        tmp = meta_path.with_name("meta.json.tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, meta_path)
        return meta
    finally:
        source.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mirror", type=Path, default=None,
        help=f"git directory, checkout or extracted folder of rangeetpan/IMagenet (default: the first of "
        f"{', '.join(str(p) for p in DEFAULT_MIRRORS)} that exists)",
    )
    parser.add_argument("--out_dir", type=Path, default=DEFAULT_OUT, help="where the parquet files go (outside git)")
    parser.add_argument("--force", action="store_true", help="rebuild even when meta.json says the outputs are current")
    args = parser.parse_args(argv)
    try:
        meta = build(args.mirror, args.out_dir, args.force)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"{meta['num_classes']} classes; " + ", ".join(f"{s}: {v['rows']} rows" for s, v in meta["splits"].items()))


if __name__ == "__main__":
    main()
