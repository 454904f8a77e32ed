"""The pruning report's page: one self-contained HTML file, every image inlined as a data URI (no
server, no network, no script). What it shows is gathered by `hf_ifbeta.report`.
"""

import base64
import html
import io
import json
from typing import Dict

from PIL import Image

from .files import to_jsonable
from .report_figures import FIGURE_FILES, KEPT_COLOUR, REMOVED_COLOUR

__all__ = ["render"]

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


def render(content, figures: Dict[str, bytes]) -> str:
    """The page of `content` (a `report._Content`), with `figures` the PNG bytes of each figure by name."""
    result, options = content.result, content.options
    prov, policy = result.provenance, result.policy or {}
    n_kept = len(result.indices)
    dataset_name = prov.get("dataset_name") or prov.get("dataset_info_name") or "local dataset"
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
        ("dataset", _e(" / ".join(str(x) for x in (prov.get("dataset_name") or prov.get("dataset_info_name"), prov.get("dataset_config")) if x) or "local files")),
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
    deciles = content.deciles()
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
    kept = content.kept
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


def _thumb_html(content, row: int, kept: bool) -> str:
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


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
