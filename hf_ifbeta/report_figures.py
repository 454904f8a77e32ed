"""The pruning report's figures, as PNG files: the policy plot, the kept share per class, the grid of
the highest- and lowest-scored images of each class, and the kept share of the flagged rows.

Drawn on `matplotlib.figure.Figure` objects, never through pyplot, so that no backend is chosen and
no figure is left open. What they show is gathered by `hf_ifbeta.report`.
"""

from pathlib import Path
from typing import Dict

import numpy as np

__all__ = ["FIGURE_FILES", "check_matplotlib", "save_figures"]

FIGURE_FILES = {
    "policy": "policy.png",
    "class_kept": "class_kept.png",
    "class_grid": "class_grid.png",
    "flagged_kept": "flagged_kept.png",
}
# A taller grid image is unreadable on a dataset card; the HTML page shows up to `max_grid_classes`.
FIGURE_MAX_CLASSES = 20
KEPT_COLOUR, REMOVED_COLOUR = "#1f77b4", "#d62728"


def check_matplotlib(what: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{what} needs matplotlib: pip install 'hf_ifbeta[plot]'.") from err


def save_figures(content, folder: Path) -> Dict[str, Path]:
    """Write the figures of `content` (a `report._Content`) in `folder`; returns {figure name: path}."""
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


def _grid_figure(content):
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
    kept = content.kept
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
