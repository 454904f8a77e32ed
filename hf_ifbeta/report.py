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
Needs matplotlib (`pip install 'hf_ifbeta[plot]'`). This module gathers what the report shows; the
figures are drawn by `report_figures` and the page by `report_html`. A result is read through its
attributes and methods only, so that `PruningResult` (`hf_ifbeta.result`) can write its own report.

Example:
```python
>>> result = pruner.last_result                       # after pruner.prune(ds, ratio=0.5)
>>> result.report(ds, "out/report.html")              # then open out/report.html in a browser
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

import datasets
import numpy as np
from PIL import Image

from .data import column_values, decode_image, find_image_column
from .policy import rank_positions
from .report_figures import FIGURE_FILES, check_matplotlib, save_figures
from .report_html import render

if TYPE_CHECKING:
    from .result import PruningResult

__all__ = [
    "FIGURE_FILES",
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
    """Everything the figures (`report_figures`) and the page (`report_html`) show."""

    result: PruningResult
    options: ReportOptions
    classes: List[ClassSummary]
    kept: np.ndarray  # (n,) bool, `kept_mask(result)`
    flagged: Optional[FlaggedSummary] = None
    flags: Optional[np.ndarray] = None  # (n,) bool
    other_labels: Optional[np.ndarray] = None  # (n,) the second label column
    class_names: Optional[List[str]] = None
    thumbnails: Dict[int, Image.Image] = field(default_factory=dict)  # row id -> thumbnail

    def name(self, label: int) -> str:
        names = self.class_names
        return str(names[label]) if names is not None and 0 <= label < len(names) else str(int(label))

    def deciles(self) -> np.ndarray:
        return kept_share_per_rank_decile(self.result)


def _content(result: PruningResult, dataset: Optional[datasets.Dataset], options: ReportOptions) -> _Content:
    if dataset is not None:
        result._check_same_rows(dataset)
    kept = kept_mask(result)  # fails early without a selection
    class_names = list(options.class_names) if options.class_names is not None else None
    label_column = options.label_column or result.config.get("label_column") or "label"
    if class_names is None and dataset is not None:
        feature = (dataset.features or {}).get(label_column)
        if isinstance(feature, datasets.ClassLabel):
            class_names = list(feature.names)
    classes = class_summaries(result, options.per_class, class_names)
    content = _Content(result, options, classes, kept, class_names=class_names)
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
    check_matplotlib("write_figures")
    options = options or ReportOptions(**kwargs)
    return save_figures(_content(result, dataset, options), Path(folder))


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
    check_matplotlib("The pruning report")
    if options is not None and kwargs:
        raise TypeError(f"Pass options=ReportOptions(...) or keyword arguments ({sorted(kwargs)}), not both.")
    options = options or ReportOptions(**kwargs)
    path = Path(path)
    content = _content(result, dataset, options)
    figures = save_figures(content, path.parent)
    path.write_text(render(content, {name: p.read_bytes() for name, p in figures.items()}), encoding="utf-8")
    return path
