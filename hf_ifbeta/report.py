"""A pruning report a person opens in a browser: what a `PruningResult` kept and removed, in pictures.

`write_report` writes one self-contained HTML page (every image inlined as a data URI: no server, no
network, no script) and the same figures as PNG files beside it:

- `policy.png`: the score histogram, the policy density over rank positions, the kept share per rank
  decile (`PruningResult.plot`);
- `class_kept.png`: the kept share of each class;
- `class_grid.png`: the highest- and lowest-scored images of each class, with their scores;
- `flagged_kept.png`: the kept share of the flagged rows against the rest (known-noisy flags, or rows
  whose second label differs), when a flag or second label column is given.

`write_figures` writes only the PNGs; the Hub dataset card of a shared subset embeds them.
Needs matplotlib (`pip install 'hf_ifbeta[plot]'`).

Example:
```python
>>> result = pruner.last_result                       # after pruner.prune(ds, ratio=0.5)
>>> result.report(ds, "out/report.html")              # then open out/report.html in a browser
```
"""

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import datasets
import numpy as np
from PIL import Image

from .data import column_values, decode_image, find_image_column
from .policy import rank_positions
from .pruner import PruningResult, to_jsonable

__all__ = [
    "ClassSummary",
    "FlaggedSummary",
    "ReportOptions",
    "class_summaries",
    "flagged_summary",
    "kept_mask",
    "kept_share_per_rank_decile",
    "write_figures",
    "write_report",
]

FIGURE_FILES = {
    "policy": "policy.png",
    "class_kept": "class_kept.png",
    "class_grid": "class_grid.png",
    "flagged_kept": "flagged_kept.png",
}
# A taller grid image is unreadable on a dataset card; the HTML page shows up to `max_grid_classes`.
FIGURE_MAX_CLASSES = 20
KEPT_COLOUR, REMOVED_COLOUR = "#1f77b4", "#d62728"


@dataclass
class ReportOptions:
    """What the report shows beyond the result itself.

    Args:
        image_column (`str`, *optional*): the images (default: the result's configured image column, else the
            dataset's only `Image` column).
        label_column (`str`, *optional*): the label column, read for class names (default: the result's).
        noisy_column (`str`, *optional*): a column of known-noisy flags (booleans or 0 / 1): the report compares
            the kept share of the flagged rows with that of the rest.
        other_label_column (`str`, *optional*): a second label column (e.g. the clean labels of a noisy-label
            set): the rows whose two labels differ are the flagged ones.
        class_names (`list` of `str`, *optional*): class names by id (default: the label column's `ClassLabel`
            names, else the ids).
        per_class (`int`): images shown per class at each end of the score ranking.
        thumbnail_size (`int`): longest side of a thumbnail, in pixels.
        max_grid_classes (`int`): classes that get an image grid on the page (the first by id); the kept-share
            table lists every class.
        title (`str`, *optional*): the page title.
    """

    image_column: Optional[str] = None
    label_column: Optional[str] = None
    noisy_column: Optional[str] = None
    other_label_column: Optional[str] = None
    class_names: Optional[Sequence[str]] = None
    per_class: int = 8
    thumbnail_size: int = 64
    max_grid_classes: int = 100
    title: Optional[str] = None

    def __post_init__(self):
        if self.noisy_column and self.other_label_column:
            raise ValueError(
                f"Give noisy_column ({self.noisy_column!r}) or other_label_column ({self.other_label_column!r}), "
                "not both: the report compares one set of flagged rows with the rest."
            )
        for name, low in (("per_class", 1), ("thumbnail_size", 8), ("max_grid_classes", 0)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"ReportOptions.{name} must be at least {low}, got {getattr(self, name)}.")


@dataclass
class ClassSummary:
    """One class of a selection: its size, how many rows were kept, and its extreme rows by score."""

    label: int
    name: str
    rows: int
    kept: int
    highest: np.ndarray  # row ids, highest score first
    lowest: np.ndarray  # row ids, lowest score first; disjoint from `highest`

    @property
    def kept_share(self) -> float:
        return self.kept / self.rows


@dataclass
class FlaggedSummary:
    """The kept share of the flagged rows against the rest."""

    rule: str  # which rows are flagged, in words
    flagged_rows: int
    flagged_kept: int
    other_rows: int
    other_kept: int

    @property
    def flagged_kept_share(self) -> float:
        return self.flagged_kept / self.flagged_rows if self.flagged_rows else float("nan")

    @property
    def other_kept_share(self) -> float:
        return self.other_kept / self.other_rows if self.other_rows else float("nan")


# ---------------------------------------------------------------------------- numbers
def kept_mask(result: PruningResult) -> np.ndarray:
    """(n,) bool: True for the rows the result's selection keeps."""
    if result.indices is None:
        raise ValueError("The result has no selection: call result.select_indices(ratio) first.")
    kept = np.zeros(result.num_rows, dtype=bool)
    kept[result.indices] = True
    return kept


def kept_share_per_rank_decile(result: PruningResult) -> np.ndarray:
    """(10,) share of the rows kept in each tenth of the rank positions, least helpful tenth first.

    Rows are ranked within their class when the result's configuration stratifies (as the policy ranks them).
    """
    u = rank_positions(result.scores, result.labels, stratify=result.config.get("stratify", True))
    deciles = np.minimum((u * 10).astype(int), 9)
    kept = kept_mask(result)
    return np.array([kept[deciles == k].mean() if np.any(deciles == k) else np.nan for k in range(10)])


def class_summaries(
    result: PruningResult, per_class: int = 8, class_names: Optional[Sequence[str]] = None
) -> List[ClassSummary]:
    """One `ClassSummary` per class present in the result's labels, by class id."""
    kept = kept_mask(result)
    summaries = []
    for c in np.unique(result.labels):
        rows = np.flatnonzero(result.labels == c)
        order = rows[np.argsort(-result.scores[rows], kind="stable")]  # highest first, ties: earlier row first
        highest = order[:per_class]
        lowest = order[len(highest):][::-1][:per_class]
        name = str(class_names[c]) if class_names is not None and c < len(class_names) else str(int(c))
        summaries.append(ClassSummary(int(c), name, len(rows), int(kept[rows].sum()), highest, lowest))
    return summaries


def flagged_summary(result: PruningResult, flags: np.ndarray, rule: str) -> FlaggedSummary:
    """The kept share of the rows where `flags` (n,) is True against the rest; `rule` says what the flag means."""
    flags = np.asarray(flags, dtype=bool)
    if flags.shape != (result.num_rows,):
        raise ValueError(f"flags must have one value per scored row ({result.num_rows}), got shape {flags.shape}.")
    kept = kept_mask(result)
    return FlaggedSummary(
        rule, int(flags.sum()), int(kept[flags].sum()), int((~flags).sum()), int(kept[~flags].sum())
    )


# ---------------------------------------------------------------------------- what the report is made of
@dataclass
class _Content:
    result: PruningResult
    options: ReportOptions
    classes: List[ClassSummary]
    flagged: Optional[FlaggedSummary] = None
    flags: Optional[np.ndarray] = None  # (n,) bool
    other_labels: Optional[np.ndarray] = None  # (n,) the second label column
    class_names: Optional[List[str]] = None
    thumbnails: Dict[int, Image.Image] = field(default_factory=dict)  # row id -> thumbnail

    def name(self, label: int) -> str:
        names = self.class_names
        return str(names[label]) if names is not None and 0 <= label < len(names) else str(int(label))


def _content(result: PruningResult, dataset: Optional[datasets.Dataset], options: ReportOptions) -> _Content:
    if dataset is not None:
        result._check_same_rows(dataset)
    kept_mask(result)  # fail early without a selection
    class_names = list(options.class_names) if options.class_names is not None else None
    label_column = options.label_column or result.config.get("label_column") or "label"
    if class_names is None and dataset is not None:
        feature = (dataset.features or {}).get(label_column)
        if isinstance(feature, datasets.ClassLabel):
            class_names = list(feature.names)
    content = _Content(result, options, class_summaries(result, options.per_class, class_names), class_names=class_names)
    if options.noisy_column or options.other_label_column:
        if dataset is None:
            raise ValueError("noisy_column / other_label_column need the dataset that holds them.")
        column = options.noisy_column or options.other_label_column
        _check_column(dataset, column, "noisy_column" if options.noisy_column else "other_label_column")
        values = column_values(dataset, column)
        if options.noisy_column:
            if values.dtype.kind in "biuf":
                bad = ~np.isin(values, [0, 1])
            else:  # objects (a column with nulls, strings, ...)
                bad = np.array([not (isinstance(_scalar(v), (bool, int)) and _scalar(v) in (0, 1)) for v in values])
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"Column {column!r} must hold booleans or 0 / 1 flags; row {row} holds {_scalar(values[row])!r}."
                )
            content.flags, rule = values.astype(bool), f"`{column}` is true"
        else:
            content.other_labels = values
            content.flags, rule = values != result.labels, f"`{column}` differs from the scored label"
        content.flagged = flagged_summary(result, content.flags, rule)
    if dataset is not None:
        image_column = find_image_column(dataset, options.image_column or result.config.get("image_column"))
        rows = np.concatenate(
            [np.concatenate([s.highest, s.lowest]) for s in content.classes[: options.max_grid_classes]]
            + [np.zeros(0, np.int64)]
        )
        # Without the caller's format or transform, the column gives stored images, not model inputs.
        images = dataset.select_columns([image_column]).with_format(None).select(rows)
        for i, row in enumerate(rows):
            image = decode_image(images[i][image_column], int(row), image_column)
            content.thumbnails[int(row)] = _thumbnail(image, options.thumbnail_size)
    return content


def _scalar(value):
    """A NumPy scalar or one-element array as the Python value it holds."""
    return value.item() if isinstance(value, (np.generic, np.ndarray)) and np.size(value) == 1 else value


def _check_column(dataset: datasets.Dataset, column: str, argument: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(f"{argument}={column!r} is not a column of the dataset; its columns are {dataset.column_names}.")


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    scale = size / max(w, h)
    if scale >= 2:  # small images (CIFAR's 32 px) grow by whole pixels, so they stay sharp
        return image.resize((w * int(scale), h * int(scale)), Image.NEAREST)
    if scale < 1:
        image = image.copy()
        image.thumbnail((size, size))
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------------------- figures
def _check_matplotlib(what: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{what} needs matplotlib: pip install 'hf_ifbeta[plot]'.") from err


def _save_figures(content: _Content, folder: Path) -> Dict[str, Path]:
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    result, paths = content.result, {name: folder / file for name, file in FIGURE_FILES.items()}
    result.plot(paths["policy"])

    fig = Figure(figsize=(min(13, max(5, 2 + 0.45 * len(content.classes))), 3.4))
    ax = fig.subplots()
    x = np.arange(len(content.classes))
    ax.bar(x, [s.kept_share for s in content.classes], color=KEPT_COLOUR)
    ax.axhline(1 - result.ratio, color="k", ls="--", lw=1, label=f"keep rate {1 - result.ratio:.2f}")
    if len(content.classes) <= 30:
        names = [s.name for s in content.classes]
        crowded = sum(len(n) for n in names) > 4 * len(names) + 8
        ax.set_xticks(x, names, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set(title="kept share per class", xlabel="class", ylabel="kept share", ylim=(0, 1.05))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(paths["class_kept"], dpi=120)

    if content.thumbnails:
        _grid_figure(content).savefig(paths["class_grid"], dpi=100)
    else:
        del paths["class_grid"]

    if content.flagged is not None:
        f = content.flagged
        fig = Figure(figsize=(5, 3.2))
        ax = fig.subplots()
        shares = [f.flagged_kept_share, f.other_kept_share]
        ax.bar([0, 1], np.nan_to_num(shares), color=[REMOVED_COLOUR, "0.6"])
        for i, (kept, rows) in enumerate(((f.flagged_kept, f.flagged_rows), (f.other_kept, f.other_rows))):
            ax.text(i, np.nan_to_num(shares[i]) + 0.02, f"{kept:,} of {rows:,}", ha="center")
        ax.axhline(1 - result.ratio, color="k", ls="--", lw=1, label=f"keep rate {1 - result.ratio:.2f}")
        ax.set_xticks([0, 1], ["flagged", "the rest"])
        ax.set(title=f"kept share: flagged rows ({f.rule.replace('`', '')})", ylabel="kept share", ylim=(0, 1.15))
        ax.title.set_fontsize(9)
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(paths["flagged_kept"], dpi=120)
    else:
        del paths["flagged_kept"]
    return paths


def _grid_figure(content: _Content):
    """Rows: classes; columns: the highest-scored images, then the lowest-scored; a frame in the kept or
    removed colour and the score above each image. The images are pasted into one mosaic, so the figure has
    one axes whatever the number of images."""
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    shown = min(FIGURE_MAX_CLASSES, content.options.max_grid_classes)
    classes = [s for s in content.classes[:shown] if len(s.highest)]
    k, size = content.options.per_class, max(im.width for im in content.thumbnails.values())
    size = max(size, max(im.height for im in content.thumbnails.values()))
    border, gap, head = 3, 8, 14  # px: frame, space between cells, room for the score above a cell
    cell_w, cell_h = size + 2 * border + gap, size + 2 * border + gap + head
    spacer = cell_w // 2  # between the highest and the lowest
    width, height = 2 * k * cell_w + spacer, len(classes) * cell_h
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)  # (H, W, RGB)
    kept = kept_mask(content.result)
    colours = {True: np.array(to_rgb(KEPT_COLOUR)) * 255, False: np.array(to_rgb(REMOVED_COLOUR)) * 255}
    labels = []  # (x, y, text) in mosaic pixels
    for r, summary in enumerate(classes):
        # Scores fall from left to right: the highest first, the lowest last.
        cells = [(c, row) for c, row in enumerate(summary.highest)]
        cells += [(2 * k - 1 - c, row) for c, row in enumerate(summary.lowest)]
        y0 = r * cell_h + head
        for c, row in cells:
            x0 = c * cell_w + (spacer if c >= k else 0)
            mosaic[y0 : y0 + size + 2 * border, x0 : x0 + size + 2 * border] = colours[bool(kept[row])]
            image = np.asarray(content.thumbnails[int(row)].convert("RGB"))
            h, w = image.shape[:2]
            top, left = y0 + border + (size - h) // 2, x0 + border + (size - w) // 2
            mosaic[top : top + h, left : left + w] = image
            labels.append((x0 + border + size / 2, y0 - 2, f"{content.result.scores[row]:.3g}"))
        labels.append((-6, y0 + border + size / 2, summary.name[:28]))
    margin_left = 12 + 7 * max(len(s.name[:28]) for s in classes)
    margin_top = 30
    dpi = 100  # one mosaic pixel is one pixel of the saved PNG
    fig = Figure(figsize=((width + margin_left) / dpi, (height + margin_top) / dpi), dpi=dpi)
    W, H = width + margin_left, height + margin_top
    ax = fig.add_axes((margin_left / W, 0, width / W, height / H))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for x, y, text in labels:
        if x < 0:
            ax.text(x, y, text, ha="right", va="center", fontsize=9)
        else:
            ax.text(x, y, text, ha="center", va="bottom", fontsize=7)
    fig.text(
        0.5, 1 - 8 / H, "highest scores (left) and lowest (right) per class; frame: kept (blue) or removed (red)",
        ha="center", va="top", fontsize=10,
    )
    return fig


def write_figures(
    result: PruningResult,
    dataset: Optional[datasets.Dataset],
    folder: Union[str, os.PathLike],
    options: Optional[ReportOptions] = None,
    **kwargs,
) -> Dict[str, Path]:
    """Write the report's figures as PNG files in `folder`; returns {figure name: path}.

    Without `dataset` there are no images to show: `class_grid.png` (and the flagged-rows figure, which reads
    its column) is not written. `options` or keyword arguments: `ReportOptions` fields.
    """
    _check_matplotlib("write_figures")
    options = options or ReportOptions(**kwargs)
    return _save_figures(_content(result, dataset, options), Path(folder))


def write_report(
    result: PruningResult,
    dataset: datasets.Dataset,
    path: Union[str, os.PathLike],
    options: Optional[ReportOptions] = None,
    **kwargs,
) -> Path:
    """Write the pruning report: one self-contained HTML file at `path`, and its figures as PNGs beside it.

    Args:
        result (`PruningResult`): a result with a selection.
        dataset (`datasets.Dataset`): the scored rows, in the scored order (a formatted or transformed copy of them
            is fine: the images are read as stored).
        path (`str`): the HTML file to write; its folder receives `policy.png`, `class_kept.png`,
            `class_grid.png` (and `flagged_kept.png`).
        options (`ReportOptions`, *optional*): what to show; keyword arguments set its fields instead.

    Returns:
        `Path`: the HTML file.
    """
    _check_matplotlib("The pruning report")
    if options is not None and kwargs:
        raise TypeError(f"Pass options=ReportOptions(...) or keyword arguments ({sorted(kwargs)}), not both.")
    options = options or ReportOptions(**kwargs)
    path = Path(path)
    content = _content(result, dataset, options)
    figures = _save_figures(content, path.parent)
    path.write_text(_render(content, {name: p.read_bytes() for name, p in figures.items()}), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- the page
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 1.2rem 1.6rem 3rem; color: #222; background: #fff; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
h3 { margin: 1.2rem 0 .3rem; font-size: 1.05rem; }
.lede { font-size: 1.1rem; color: #444; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
img.figure { max-width: 100%; height: auto; display: block; margin: .6rem 0; }
.row { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.strip { display: flex; flex-wrap: wrap; gap: .4rem; align-items: flex-start; margin: .2rem 0 .6rem; }
.strip-title { width: 7.5rem; font-size: .85rem; color: #555; padding-top: .3rem; }
figure.thumb { margin: 0; width: 96px; font-size: .72rem; text-align: center; line-height: 1.25; }
figure.thumb img { border: 3px solid; image-rendering: pixelated; max-width: 80px; height: auto; }
figure.kept img { border-color: KEPT_COLOUR; }
figure.removed img { border-color: REMOVED_COLOUR; opacity: .6; }
figure.removed figcaption .status { color: REMOVED_COLOUR; }
.flag { color: REMOVED_COLOUR; font-weight: 600; }
details { margin: .6rem 0; } pre { background: #f7f7f7; padding: .6rem; overflow-x: auto; font-size: .8rem; }
footer { margin-top: 3rem; color: #777; font-size: .85rem; }
""".replace("KEPT_COLOUR", KEPT_COLOUR).replace("REMOVED_COLOUR", REMOVED_COLOUR)


def _e(x) -> str:
    return html.escape(str(x))


def _share(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f} %"


def _table(rows, header=None, table_id=None, numeric=()) -> str:
    out = [f'<table id="{table_id}">' if table_id else "<table>"]
    if header:
        out.append("<tr>" + "".join(f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(header)) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _render(content: _Content, figures: Dict[str, bytes]) -> str:
    result, options = content.result, content.options
    prov, policy = result.provenance, result.policy or {}
    n_kept = len(result.indices)
    dataset_name = prov.get("dataset_name") or "local dataset"
    title = options.title or f"Pruning report: {dataset_name}, {result.method}, ratio {result.ratio}"
    policy_text = (
        f"Beta(a={policy['a']:.3g}, b={policy['b']:.3g}) over class-wise score ranks" if "a" in policy and "b" in policy
        else "the method's fixed selection rule"
    )
    parts = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="lede"><code>{_e(result.method)}</code> kept <b>{n_kept:,}</b> of {result.num_rows:,} rows '
        f"(ratio removed {_e(result.ratio)}, seed {_e(result.seed)}) by {_e(policy_text)}; teacher "
        f"<code>{_e(prov.get('teacher'))}</code>.</p>",
    ]

    # Provenance: the run that made these rows.
    run_rows = [
        ("teacher", f"<code>{_e(prov.get('teacher'))}</code>"),
        ("dataset", _e(" / ".join(str(x) for x in (prov.get("dataset_name"), prov.get("dataset_config")) if x) or "local files")),
        ("split", _e(prov.get("dataset_split"))),
        ("dataset fingerprint", f"<code>{_e(prov.get('dataset_fingerprint'))}</code>"),
        ("rows scored", f"{result.num_rows:,}"),
        ("classes", _e(prov.get("num_classes", len(content.classes)))),
        ("method", f"<code>{_e(result.method)}</code>"),
        ("ratio removed", _e(result.ratio)),
        ("rows kept", f"{n_kept:,} ({_share(n_kept / result.num_rows)})"),
        ("seed", _e(result.seed)),
        ("policy", _e(policy_text)),
    ]
    for key, value in policy.items():
        if key not in ("a", "b") and (value is None or isinstance(value, (bool, int, float, str))):
            run_rows.append((f"policy: {key}", _e(f"{value:.6g}" if isinstance(value, float) else value)))
    for key, value in result.timings.items():
        run_rows.append((f"time: {key.removesuffix('_s').replace('_', ' ')}", f"{value:.1f} s"))
    run_rows += [("hf_ifbeta", _e(prov.get("hf_ifbeta_version"))), ("created", _e(prov.get("created")))]
    details = json.dumps({"config": result.config, "policy": to_jsonable(policy), "provenance": prov}, indent=2, default=str)
    parts += [
        '<section id="run"><h2>The run</h2>',
        _table([(_e(k), v) for k, v in run_rows], table_id="provenance"),
        f"<details><summary>configuration, policy and provenance as saved</summary><pre>{_e(details)}</pre></details>",
        "</section>",
    ]

    # Scores and policy.
    deciles = kept_share_per_rank_decile(result)
    parts += [
        '<section id="policy"><h2>Scores and policy</h2>',
        "<p>Left: the score of every row, and of the kept ones. Middle: the policy's density over the rank "
        "position u of a row within its class (u = 1: the most helpful row by score). Right: the share of the "
        "rows kept in each tenth of the ranks.</p>",
        f'<img class="figure" alt="score histogram, policy density and kept share per rank decile" src="{_data_uri(figures["policy"])}">',
        _table(
            [["kept share"] + [_share(x) for x in deciles]],
            header=["rank decile"] + [f"{10 * k}–{10 * (k + 1)} %" for k in range(10)],
            table_id="rank-deciles", numeric=range(1, 11),
        ),
        "</section>",
    ]

    # Classes: the kept share of each, then the extreme images of each.
    class_rows = [
        (_e(s.label), _e(s.name), f"{s.rows:,}", f"{s.kept:,}", _share(s.kept_share)) for s in content.classes
    ]
    parts += [
        '<section id="classes"><h2>Per class</h2>',
        '<div class="row">',
        f'<img class="figure" alt="kept share per class" src="{_data_uri(figures["class_kept"])}">',
        _table(class_rows, header=("class", "name", "rows", "kept", "kept share"), table_id="class-kept", numeric=(2, 3, 4)),
        "</div>",
    ]
    shown = content.classes[: options.max_grid_classes]
    if len(shown) < len(content.classes):
        parts.append(f"<p>Images of the first {len(shown)} of {len(content.classes)} classes.</p>")
    kept = kept_mask(result)
    for s in shown:
        parts.append(
            f'<div class="class" id="class-{s.label}" data-label="{s.label}"><h3>{_e(s.name)} (class {s.label}): '
            f"kept {s.kept:,} of {s.rows:,} ({_share(s.kept_share)})</h3>"
        )
        for what, rows in (("highest scores", s.highest), ("lowest scores", s.lowest)):
            cells = [_thumb_html(content, int(row), bool(kept[row])) for row in rows]
            parts.append(f'<div class="strip"><div class="strip-title">{what}</div>{"".join(cells)}</div>')
        parts.append("</div>")
    parts.append("</section>")

    # Flagged rows: did the suspicious ones go?
    if content.flagged is not None:
        f = content.flagged
        parts += [
            '<section id="flagged"><h2>Flagged rows</h2>',
            f"<p>Flagged: the rows where {_e(f.rule).replace('`', '')}. A pruning that drops harmful rows keeps a "
            "smaller share of them than of the rest.</p>",
            '<div class="row">',
            f'<img class="figure" alt="kept share of the flagged rows and of the rest" src="{_data_uri(figures["flagged_kept"])}">',
            _table(
                [("flagged", f"{f.flagged_rows:,}", f"{f.flagged_kept:,}", _share(f.flagged_kept_share)),
                 ("the rest", f"{f.other_rows:,}", f"{f.other_kept:,}", _share(f.other_kept_share))],
                header=("rows", "count", "kept", "kept share"), table_id="flagged-kept", numeric=(1, 2, 3),
            ),
            "</div>",
            "</section>",
        ]

    parts.append(
        f"<footer>Written by hf_ifbeta {_e(prov.get('hf_ifbeta_version'))}. Every image is inside this file; "
        f"the figures are also saved as PNG files beside it ({', '.join(FIGURE_FILES[k] for k in figures)}).</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # An empty inline icon: the browser asks for no favicon file.
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )


def _thumb_html(content: _Content, row: int, kept: bool) -> str:
    result = content.result
    label = int(result.labels[row])
    status = "kept" if kept else "removed"
    lines = [f"{result.scores[row]:.4g}", _e(content.name(label))]
    if content.other_labels is not None and content.other_labels[row] != label:
        lines.append(f'<span class="flag">other label: {_e(content.name(int(content.other_labels[row])))}</span>')
    elif content.flags is not None and content.flags[row]:
        lines.append('<span class="flag">flagged</span>')
    image = content.thumbnails[row]
    return (
        f'<figure class="thumb {status}" data-row="{row}"><img alt="row {row}" width="{image.width}" '
        f'height="{image.height}" src="{_data_uri(_png(image))}"><figcaption>{"<br>".join(lines)}<br>'
        f'<span class="status">{status}</span><br>row {row}</figcaption></figure>'
    )
