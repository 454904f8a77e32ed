"""scripts/build_tiny_imagenet.py on a tiny synthetic copy of the mirror's layout (folder and bare git)."""

import importlib.util
import io
import shutil
import subprocess
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

spec = importlib.util.spec_from_file_location(
    "build_tiny_imagenet", Path(__file__).resolve().parents[1] / "scripts" / "build_tiny_imagenet.py"
)
build_tiny_imagenet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_tiny_imagenet)

# Unsorted on purpose: labels follow the sorted wnids.
WNIDS = ["n02", "n01", "n03"]
COLOURS = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200)}
PER_CLASS = 4
# val file -> class, shuffled like the real annotations
VAL = {f"val_{k}.JPEG": WNIDS[(k * 2) % 3] for k in range(6)}


def jpeg(wnid: str, grey: bool = False) -> bytes:
    image = Image.new("RGB", (64, 64), COLOURS[wnid])
    if grey:
        image = image.convert("L")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_tree(root: Path) -> Path:
    """`root/tiny-imagenet-200/` as in rangeetpan/IMagenet, with box files and an unlabelled test folder."""
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "test" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS))  # no trailing newline, as in the mirror
    (base / "words.txt").write_text("n00\tentity\n" + "".join(f"{w}\tthing {w}\n" for w in WNIDS))
    for w in WNIDS:
        (base / "train" / w / "images").mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
        for k in range(PER_CLASS):
            (base / "train" / w / "images" / f"{w}_{k}.JPEG").write_bytes(jpeg(w, grey=(w == "n03" and k == 1)))
    lines = []
    for name, w in VAL.items():
        (base / "val" / "images" / name).write_bytes(jpeg(w))
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines))
    (base / "test" / "images" / "test_0.JPEG").write_bytes(jpeg("n01"))
    return base


def load(out: Path, split: str):
    return datasets.load_dataset("parquet", data_files={split: str(out / f"{split}.parquet")})[split]


def nearest_class(image) -> str:
    mean = np.asarray(image, dtype=float).mean(axis=(0, 1))
    return min(COLOURS, key=lambda w: np.abs(mean - COLOURS[w]).sum())


@pytest.fixture
def tree(tmp_path):
    make_tree(tmp_path / "src")
    return tmp_path / "src"


def test_rows_labels_and_val_annotations(tree, tmp_path):
    out = tmp_path / "out"
    meta = build_tiny_imagenet.build(tree, out, log=lambda s: None)
    train, test = load(out, "train"), load(out, "test")
    assert train.features["label"].names == sorted(WNIDS) == meta["classes"]
    assert meta["words"] == [f"thing {w}" for w in sorted(WNIDS)]
    assert len(train) == PER_CLASS * len(WNIDS) and len(test) == len(VAL)
    assert sorted(train["label"]) == sorted(list(range(len(WNIDS))) * PER_CLASS)
    for ds in (train, test):
        for row in ds:
            assert row["img"].size == (64, 64)
            wnid = ds.features["label"].int2str(row["label"])
            assert (wnid == "n03") if row["img"].mode == "L" else (nearest_class(row["img"]) == wnid)
    # The bytes are the source files as they are, and the path says which file a row came from.
    raw = test.cast_column("img", datasets.Image(decode=False))
    for row in raw:
        name = row["img"]["path"].split("/")[-1]
        assert row["img"]["path"] == f"val/images/{name}"
        assert row["img"]["bytes"] == (tree / "tiny-imagenet-200" / "val" / "images" / name).read_bytes()
        assert test.features["label"].int2str(row["label"]) == VAL[name]
    assert meta["splits"]["train"]["modes"] == {"RGB": PER_CLASS * len(WNIDS) - 1, "L": 1}


def test_rerun_is_a_no_op_until_the_source_changes(tree, tmp_path):
    out = tmp_path / "out"
    build_tiny_imagenet.build(tree, out, log=lambda s: None)
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    before = load(out, "train")["label"]
    messages = []
    build_tiny_imagenet.build(tree, out, log=messages.append)
    assert messages and messages[0].startswith("up to date")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first
    shutil.rmtree(out)
    build_tiny_imagenet.build(tree, out, log=lambda s: None)
    assert load(out, "train")["label"] == before  # deterministic order
    extra = tree / "tiny-imagenet-200" / "train" / "n01" / "images" / "n01_9.JPEG"
    extra.write_bytes(jpeg("n01"))
    meta = build_tiny_imagenet.build(tree, out, log=lambda s: None)
    assert meta["splits"]["train"]["rows"] == PER_CLASS * len(WNIDS) + 1 == len(load(out, "train"))
    assert not list(out.glob("*.tmp"))


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_bare_git_mirror_gives_the_same_rows_and_records_the_commit(tree, tmp_path):
    def git(*args, cwd=tree):
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tree")
    commit = git("rev-parse", "HEAD")
    git("clone", "-q", "--bare", str(tree), str(tmp_path / "mirror"), cwd=tmp_path)
    meta = build_tiny_imagenet.build(tmp_path / "mirror", tmp_path / "from_git", log=lambda s: None)
    build_tiny_imagenet.build(tree / "tiny-imagenet-200", tmp_path / "from_folder", log=lambda s: None)
    assert meta["commit"] == commit
    for split in ("train", "test"):
        a = load(tmp_path / "from_git", split).cast_column("img", datasets.Image(decode=False))
        b = load(tmp_path / "from_folder", split).cast_column("img", datasets.Image(decode=False))
        assert a["label"] == b["label"] and a["img"] == b["img"]


def test_missing_source_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*rangeetpan/IMagenet"):
        build_tiny_imagenet.build(tmp_path / "nowhere", tmp_path / "out")


@pytest.mark.parametrize(
    "remove,message",
    [
        ("wnids.txt", "No `wnids.txt`"),
        ("train", "No `train/` folder"),
        ("val/val_annotations.txt", "No `val/val_annotations.txt`"),
        ("val/images", r"No `val/images/\*.JPEG`"),
        ("train/n02/images", r"No images in .*train/<wnid>/images/.*\['n02'\]"),
    ],
)
def test_missing_folder_or_file_is_named(tree, tmp_path, remove, message):
    path = tree / "tiny-imagenet-200" / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileNotFoundError, match=message):
        build_tiny_imagenet.build(tree, tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_bad_annotation_and_corrupt_image_are_named(tree, tmp_path):
    base = tree / "tiny-imagenet-200"
    annotations = base / "val" / "val_annotations.txt"
    good = annotations.read_text()
    annotations.write_text(good + "\nval_0.JPEG\tn99\t0\t0\t1\t1")
    with pytest.raises(ValueError, match="line 7.*n99"):
        build_tiny_imagenet.build(tree, tmp_path / "out")
    annotations.write_text(good)
    (base / "val" / "images" / "val_99.JPEG").write_bytes(jpeg("n01"))
    with pytest.raises(ValueError, match=r"1 images without a label \['val_99.JPEG'\]"):
        build_tiny_imagenet.build(tree, tmp_path / "out")
    (base / "val" / "images" / "val_99.JPEG").unlink()
    (base / "train" / "n01" / "images" / "n01_2.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="train/n01/images/n01_2.JPEG does not decode"):
        build_tiny_imagenet.build(tree, tmp_path / "out")
