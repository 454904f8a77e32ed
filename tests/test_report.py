"""report.py: the pruning report page and its figures, checked against the result they show; on real
CIFAR-10 rows; and opened in a real headless Chromium (slow; skipped where none is installed)."""

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hf_ifbeta
from hf_ifbeta.config import PrunerConfig
from hf_ifbeta.pruner import PruningResult
from hf_ifbeta.report import FIGURE_FILES, ReportOptions, kept_share_per_rank_decile, write_figures

from factories import tiny_image_dataset

pytest.importorskip("matplotlib")


class Page(HTMLParser):
    """What a reader of the page sees: tables by id (cell texts), thumbnails with their class, strip,
    status, caption and image, every URL the page refers to, and the tags used."""

    def __init__(self, text: str):
        super().__init__()
        self.urls, self.tags, self.tables, self.thumbs = [], set(), {}, []
        self._table = self._cell = self._label = self._strip = self._thumb = None
        self._in_strip_title = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.urls += [a[key] for key in ("src", "href") if key in a]
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._table[-1].append("")
            self._cell = True
        elif tag == "div" and "data-label" in a:
            self._label = int(a["data-label"])
        elif tag == "div" and a.get("class") == "strip-title":
            self._in_strip_title, self._strip = True, ""
        elif tag == "figure" and "thumb" in a.get("class", ""):
            self._thumb = dict(row=int(a["data-row"]), status=a["class"].split()[1], label=self._label,
                               strip=self._strip, caption="")  # fmt: skip
            self.thumbs.append(self._thumb)
        elif tag == "img" and self._thumb is not None:
            self._thumb["src"] = a["src"]

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "figure":
            self._thumb = None
        elif tag == "div":
            self._in_strip_title = False

    def handle_data(self, data):
        if self._cell:
            self._table[-1][-1] += data
        if self._in_strip_title:
            self._strip += data
        if self._thumb is not None:
            self._thumb["caption"] += data + " "


def decode_data_uri(uri: str) -> Image.Image:
    head, payload = uri.split(",", 1)
    assert head == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image


def made_up_result(ds, ratio=0.5, seed=0) -> PruningResult:
    """A result with random scores and a random selection: every number on the page has to come from it."""
    labels = np.asarray(ds["label"])
    rng = np.random.default_rng(seed)
    return PruningResult(
        method="if-beta",
        scores=rng.normal(size=len(labels)),
        labels=labels,
        config=PrunerConfig(image_column="image").to_dict(),
        provenance={
            "teacher": "tiny-teacher", "dataset_fingerprint": ds._fingerprint, "num_rows": len(labels),
            "num_classes": int(labels.max()) + 1, "hf_ifbeta_version": hf_ifbeta.__version__, "created": "2026-01-01T00:00:00",
        },  # fmt: skip
        val_indices=np.zeros(0, np.int64),
        ratio=ratio,
        seed=seed,
        indices=np.sort(rng.choice(len(labels), int(round((1 - ratio) * len(labels))), replace=False)),
        policy={"a": 2.5, "b": 0.75, "learned": True, "history": [0.3, 0.2]},
        timings={"teacher_pass_s": 1.5, "scoring_s": 0.25, "selection_s": 0.125},
    )


def share(x):
    return f"{100 * x:.1f} %"


def check_page(path: Path, result: PruningResult, ds, image_column: str, names, per_class: int) -> Page:
    """Everything the page claims, recomputed here from the result and the rows (not through report.py)."""
    text = path.read_text()
    page = Page(text)
    # Self-contained: no script, and every image or link is inline.
    assert "script" not in page.tags and page.urls and all(url.startswith("data:") for url in page.urls)
    for name in ("policy", "class_kept"):
        png = (path.parent / FIGURE_FILES[name]).read_bytes()  # the same figures beside the page
        assert base64.b64encode(png).decode() in text
    # The page's image strips as one picture, for a dataset card.
    assert Image.open(path.parent / FIGURE_FILES["class_grid"]).size[1] > 2 * 64

    kept = np.zeros(result.num_rows, bool)
    kept[result.indices] = True
    run = {row[0]: row[1] for row in page.tables["provenance"]}
    assert run["dataset fingerprint"] == result.provenance["dataset_fingerprint"]
    assert run["rows kept"].startswith(f"{kept.sum():,} ") and run["rows scored"] == f"{result.num_rows:,}"
    assert run["method"] == result.method and run["ratio removed"] == str(result.ratio)
    assert run["teacher"] == result.provenance["teacher"]
    assert {k: run[f"time: {k[:-2].replace('_', ' ')}"] for k in result.timings} == {
        k: f"{v:.1f} s" for k, v in result.timings.items()
    }

    # Kept share per class: every class, with its counts.
    classes = np.unique(result.labels)
    header, *rows = page.tables["class-kept"]
    assert header == ["class", "name", "rows", "kept", "kept share"]
    expected = []
    for c in classes:
        n_c, k_c = int((result.labels == c).sum()), int(kept[result.labels == c].sum())
        expected.append([str(c), names[c], f"{n_c:,}", f"{k_c:,}", share(k_c / n_c)])
    assert rows == expected

    # Kept share per rank decile, ranks within each class (a naive reference).
    u = np.empty(result.num_rows)
    for c in classes:
        members = np.flatnonzero(result.labels == c)
        u[members] = (np.argsort(np.argsort(result.scores[members], kind="stable"), kind="stable") + 0.5) / len(members)
    decile = np.minimum((u * 10).astype(int), 9)
    assert page.tables["rank-deciles"][1][1:] == [share(kept[decile == k].mean()) for k in range(10)]

    # Thumbnails: the highest- and lowest-scored rows of each class, decodable, showing those rows.
    assert {t["label"] for t in page.thumbs} == set(classes.tolist())
    image_rows = ds.with_format(None)
    for c in classes:
        members = np.flatnonzero(result.labels == c)
        by_score = sorted(members, key=lambda r: -result.scores[r])
        strips = {s: [t for t in page.thumbs if t["label"] == c and t["strip"] == s] for s in ("highest scores", "lowest scores")}
        assert [t["row"] for t in strips["highest scores"]] == by_score[:per_class]
        assert [t["row"] for t in strips["lowest scores"]] == by_score[::-1][:per_class]
        for t in strips["highest scores"] + strips["lowest scores"]:
            row = t["row"]
            assert t["status"] == ("kept" if kept[row] else "removed")
            assert f"{result.scores[row]:.4g}" in t["caption"] and names[c] in t["caption"]
            thumb = decode_data_uri(t["src"]).convert("RGB")
            original = image_rows[int(row)][image_column].convert("RGB")
            # Small images grow by whole pixels: shrinking back gives the stored pixels.
            assert thumb.width % original.width == 0 and thumb.width > original.width
            assert np.array_equal(np.asarray(thumb.resize(original.size, Image.NEAREST)), np.asarray(original))
    return page


# ---------------------------------------------------------------------------- fast, synthetic rows
@pytest.fixture(scope="module")
def tiny():
    ds = tiny_image_dataset(n=120, num_classes=4)
    flags = np.random.default_rng(1).random(len(ds)) < 0.25
    return ds.add_column("is_noisy", flags.tolist())


def test_page_is_self_contained_and_shows_the_result(tiny, tmp_path):
    result = made_up_result(tiny)
    # A transformed copy of the scored rows: the page shows the stored images, not the model inputs.
    copy = tiny.with_transform(lambda batch: {"pixel_values": [0] * len(batch["label"])})
    path = result.report(copy, tmp_path / "site" / "report.html", noisy_column="is_noisy", per_class=5)
    names = [str(c) for c in range(4)]  # no ClassLabel names in this dataset: ids
    page = check_page(path, result, tiny, "image", names, per_class=5)

    flags = np.asarray(tiny["is_noisy"])
    kept = np.isin(np.arange(len(tiny)), result.indices)
    header, flagged, rest = page.tables["flagged-kept"]
    assert flagged == ["flagged", f"{flags.sum():,}", f"{kept[flags].sum():,}", share(kept[flags].mean())]
    assert rest == ["the rest", f"{(~flags).sum():,}", f"{kept[~flags].sum():,}", share(kept[~flags].mean())]
    assert (path.parent / FIGURE_FILES["flagged_kept"]).stat().st_size > 5_000
    for t in page.thumbs:
        assert ("flagged" in t["caption"]) == bool(flags[t["row"]])


def test_second_label_column_flags_the_rows_whose_labels_differ(tiny, tmp_path):
    result = made_up_result(tiny, ratio=0.3, seed=2)
    other = np.asarray(tiny["label"]).copy()
    changed = np.arange(0, len(other), 7)
    other[changed] = (other[changed] + 1) % 4
    ds = tiny.add_column("clean_label", other.tolist())
    names = ["zero", "one", "two", "three"]
    path = result.report(ds, tmp_path / "report.html", ReportOptions(other_label_column="clean_label", class_names=names))
    page = check_page(path, result, ds, "image", names, per_class=8)
    kept = np.isin(np.arange(len(ds)), result.indices)
    assert page.tables["flagged-kept"][1] == ["flagged", f"{len(changed)}", f"{kept[changed].sum()}", share(kept[changed].mean())]
    for t in page.thumbs:
        assert (f"other label: {names[other[t['row']]]}" in t["caption"]) == (t["row"] in changed)


def test_kept_share_per_rank_decile_on_a_hand_made_selection():
    # Two classes of 10 rows; the two best rows of each class kept, and the worst row of class 1.
    labels = np.repeat([0, 1], 10)
    scores = np.concatenate([np.arange(10.0), -np.arange(10.0)])
    result = PruningResult("influence", scores, labels, PrunerConfig().to_dict(), {}, np.zeros(0, np.int64),
                           ratio=0.75, indices=np.array([8, 9, 10, 11, 19]))  # fmt: skip
    expected = np.zeros(10)
    expected[[8, 9]] = 1.0  # decile 8, 9: one row of each class, both kept
    expected[0] = 0.5  # decile 0: row 0 (removed) and row 19 (kept)
    assert np.array_equal(kept_share_per_rank_decile(result), expected)


def test_figures_without_the_rows_leave_out_the_images(tiny, tmp_path):
    paths = write_figures(made_up_result(tiny), None, tmp_path)
    assert sorted(paths) == ["class_kept", "policy"]
    assert all(p.exists() and Image.open(p).size[0] > 300 for p in paths.values())
    assert not (tmp_path / FIGURE_FILES["class_grid"]).exists()


def test_image_grids_of_the_first_classes_only(tiny, tmp_path):
    result = made_up_result(tiny)
    path = result.report(tiny, tmp_path / "report.html", per_class=3, max_grid_classes=2)
    page = Page(path.read_text())
    assert sorted({t["label"] for t in page.thumbs}) == [0, 1] and len(page.thumbs) == 2 * 2 * 3
    assert len(page.tables["class-kept"]) == 1 + 4  # the table still lists every class
    assert "Images of the first 2 of 4 classes." in path.read_text()
    every_class = result.report(tiny, tmp_path / "all" / "report.html", per_class=3).parent
    heights = [Image.open(folder / FIGURE_FILES["class_grid"]).size[1] for folder in (tmp_path, every_class)]
    assert heights[0] < 0.6 * heights[1]  # two rows of images in the grid, not four


def test_bad_inputs_are_refused_with_the_reason(tiny, tmp_path):
    result = made_up_result(tiny)
    with pytest.raises(ValueError, match=r"'nope' is not a column.*'is_noisy'"):
        result.report(tiny, tmp_path / "r.html", noisy_column="nope")
    with pytest.raises(ValueError, match=r"row 0 holds 2"):
        result.report(tiny.add_column("flags", [2] * len(tiny)), tmp_path / "r.html", noisy_column="flags")
    with pytest.raises(ValueError, match=r"row 1 holds None"):
        result.report(tiny.add_column("flags", [True, None] * 60), tmp_path / "r.html", noisy_column="flags")
    with pytest.raises(ValueError, match="not both"):
        ReportOptions(noisy_column="a", other_label_column="b")
    with pytest.raises(ValueError, match="per_class must be at least 1"):
        ReportOptions(per_class=0)
    with pytest.raises(ValueError, match="120 rows, got one of 100"):
        result.report(tiny.select(range(100)), tmp_path / "r.html")
    result.indices = None
    with pytest.raises(ValueError, match="no selection"):
        result.report(tiny, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------------- real CIFAR-10 rows
@pytest.fixture(scope="module")
def cifar_report(cifar_train_2k, shared_dir, tmp_path_factory):
    """IF-Beta with the ResNet-20 teacher on 1,000 real rows, half of them removed, with a second label
    column that disagrees on every 10th row; the report, the result and the rows."""
    from hf_ifbeta import DatasetPruner
    from hf_ifbeta.models import load_model

    ds = cifar_train_2k.select(range(1000))
    other = np.asarray(ds["label"]).copy()
    other[::10] = (other[::10] + 3) % 10
    ds = ds.add_column("other_label", other.tolist())
    teacher = load_model("cifar10_resnet20", checkpoint=str(shared_dir / "models" / "cifar10_resnet20.pt"))
    root = tmp_path_factory.mktemp("cifar_report")
    pruner = DatasetPruner(teacher, image_column="img", cache_dir=str(root / "cache"), outer_steps=5)
    pruner.prune(ds, ratio=0.5)
    result = pruner.last_result
    path = result.report(ds, root / "report" / "report.html", other_label_column="other_label")
    return path, result, ds


@pytest.mark.slow
def test_report_on_real_cifar_rows(cifar_report):
    path, result, ds = cifar_report
    names = ds.features["label"].names
    page = check_page(path, result, ds, "img", names, per_class=8)
    assert sorted(t["label"] for t in page.thumbs) == sorted(list(range(10)) * 16)  # every class, 8 + 8 images
    run = {row[0]: row[1] for row in page.tables["provenance"]}
    assert run["policy"] == f"Beta(a={result.policy['a']:.3g}, b={result.policy['b']:.3g}) over class-wise score ranks"
    flagged = np.asarray(ds["other_label"]) != result.labels
    kept = np.isin(np.arange(len(ds)), result.indices)
    assert page.tables["flagged-kept"][1][1:] == [f"{flagged.sum()}", f"{kept[flagged].sum()}", share(kept[flagged].mean())]
    grid = Image.open(path.parent / FIGURE_FILES["class_grid"])
    assert grid.width > 1000 and grid.height > 10 * 64  # ten rows of 64-pixel thumbnails


# ---------------------------------------------------------------------------- in a real browser
BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--enable-logging=stderr", "--v=0",
]  # fmt: skip
WINDOW = (1280, 2000)


def open_in_chromium(browser: str, page: Path, out: Path):
    """(DOM after loading, screenshot path, console messages) of `page` in a fresh headless Chromium."""
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "screenshot.png"
    proc = subprocess.run(
        [browser, *BROWSER_FLAGS, f"--user-data-dir={out / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
         f"--screenshot={shot}", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # With --enable-logging=stderr every console message of the page is a line tagged CONSOLE.
    return proc.stdout, shot, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def chromium():
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium): the page is not opened in a browser")
    return browser


@pytest.mark.slow
@pytest.mark.parametrize("rows", ["synthetic", "cifar"])
def test_page_in_headless_chromium(rows, chromium, tiny, tmp_path, request):
    # The console check can fail: a page that logs an error is caught.
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body><script>console.error("control error")</script></body></html>')
    assert any("control error" in line for line in open_in_chromium(chromium, control, tmp_path / "control")[2])

    if rows == "cifar":
        path, result, _ = request.getfixturevalue("cifar_report")
    else:
        result = made_up_result(tiny)
        path = result.report(tiny, tmp_path / "report" / "report.html", noisy_column="is_noisy")
    dom, shot, console = open_in_chromium(chromium, path, tmp_path / "browser")
    assert console == []
    for c in np.unique(result.labels):
        assert f'id="class-{c}"' in dom
    assert 'id="flagged-kept"' in dom
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert image.shape == (WINDOW[1], WINDOW[0])
    assert image.std() > 20 and (image < 200).mean() > 0.05  # not blank: text, figures and images drawn
