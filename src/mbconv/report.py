"""Figures and a self-contained HTML report, organised as chapters.

Each capability (cost, training, gates and pruning, quantisation, stability, 1-D/3-D) adds one `Chapter`;
`Report.write()` renders every chapter to `report.html` with its PNG figures embedded as base64, so the one
file can be mailed or attached. matplotlib is imported lazily (it is an extra, not a library dependency);
pyplot comes from `mbconv.plotting`, atomic result files from `mbconv.files` (both re-exported here).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write_text, write_json
from .plotting import plt, savefig

# Re-exported: figures and result files of the chapters and experiments go through this module.
__all__ = ["Chapter", "Report", "atomic_write_text", "fig_component_breakdown", "fig_curves", "fig_family", "plt",
           "savefig", "write_json"]


@dataclass
class Chapter:
    """One chapter: a title, paragraphs, tables (header + rows) and figures (PNG paths)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    order: list[tuple[str, int]] = field(default_factory=list)  # rendering order: (kind, index)

    def text(self, s: str) -> None:
        self.order.append(("p", len(self.paragraphs)))
        self.paragraphs.append(s)

    def table(self, caption: str, header: list[str], rows: list[list[Any]]) -> None:
        self.order.append(("t", len(self.tables)))
        self.tables.append((caption, header, rows))

    def figure(self, caption: str, path: Path) -> None:
        self.order.append(("f", len(self.figures)))
        self.figures.append((caption, Path(path)))


@dataclass
class Report:
    """An ordered list of chapters rendered to one HTML file."""

    title: str
    chapters: list[Chapter] = field(default_factory=list)

    def chapter(self, title: str) -> Chapter:
        c = Chapter(title)
        self.chapters.append(c)
        return c

    def render(self) -> str:
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.45}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;"
                 "padding:3px 8px;text-align:right}th{background:#eee}img{max-width:100%}"
                 "figcaption{font-size:0.9em;color:#444}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1><ol>"]
        parts += [f"<li><a href='#ch{i}'>{html.escape(c.title)}</a></li>" for i, c in enumerate(self.chapters)]
        parts.append("</ol>")
        for i, c in enumerate(self.chapters):
            parts.append(f"<h2 id='ch{i}'>{i + 1}. {html.escape(c.title)}</h2>")
            for kind, j in c.order:  # in the order the chapter added them: text stays next to its table
                if kind == "p":
                    parts.append(f"<p>{html.escape(c.paragraphs[j])}</p>")
                elif kind == "t":
                    caption, header, rows = c.tables[j]
                    parts.append(f"<table><caption>{html.escape(caption)}</caption><tr>")
                    parts += [f"<th>{html.escape(str(h))}</th>" for h in header]
                    parts.append("</tr>")
                    for r in rows:
                        parts.append("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>")
                    parts.append("</table>")
                else:
                    caption, path = c.figures[j]
                    data = base64.b64encode(Path(path).read_bytes()).decode()
                    parts.append(f"<figure><img src='data:image/png;base64,{data}'>"
                                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | Path) -> Path:
        """Write the HTML atomically (temp file + rename): a reader never sees half a report."""
        return atomic_write_text(path, self.render())


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,d}"
    return str(v)


# -- standard figures ---------------------------------------------------------------------------------------
def fig_family(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """B0-B7: ours vs the paper's params and MACs (log scale)."""
    p = plt()
    fig, ax = p.subplots(1, 2, figsize=(10, 3.8))
    names = [r["model"].replace("efficientnet_", "") for r in rows]
    x = range(len(rows))
    for a, key, paper, unit in ((ax[0], "params", "paper_params_M", 1e6), (ax[1], "macs", "paper_macs_G", 1e9)):
        a.bar([i - 0.2 for i in x], [r[key] / unit for r in rows], 0.4, label="mbconv (exact)")
        a.bar([i + 0.2 for i in x], [r[paper] for r in rows], 0.4, label="paper")
        a.set_xticks(list(x), names)
        a.set_yscale("log")
        a.set_ylabel("params (M)" if key == "params" else "MACs (G)")
        a.legend()
    ax[0].set_title("parameters")
    ax[1].set_title("multiply-adds at native resolution")
    return savefig(fig, path)


def fig_component_breakdown(by_block: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Stacked MACs per block, by component."""
    p = plt()
    fig, ax = p.subplots(figsize=(10, 3.8))
    comps = [c for c in ("stem", "expand", "depthwise", "se", "project", "conv", "head", "classifier")
             if any(r.get(c, 0) for r in by_block)]
    bottom = [0.0] * len(by_block)
    for c in comps:
        vals = [r.get(c, 0) / 1e6 for r in by_block]
        ax.bar(range(len(by_block)), vals, bottom=bottom, label=c)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylim(0, max(bottom) * 1.08)
    ax.set_xticks(range(len(by_block)), [r["label"] for r in by_block], rotation=60, fontsize=7)
    ax.set_ylabel("MMACs")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return savefig(fig, path)


def fig_curves(history: list[dict[str, Any]], path: str | Path, title: str = "training") -> Path:
    """Loss and accuracy per epoch from metrics.jsonl rows."""
    p = plt()
    fig, ax = p.subplots(1, 2, figsize=(10, 3.6))
    ep = [h["epoch"] for h in history]
    for key in ("train_loss", "test_loss"):
        if key in history[0]:
            ax[0].plot(ep, [h[key] for h in history], marker="o", label=key)
    for key in ("train_acc", "test_acc", "ema_test_acc"):
        if key in history[0] and history[0][key] is not None:
            ax[1].plot(ep, [100 * h[key] for h in history], marker="o", label=key)
    ax[0].set_xlabel("epoch")
    ax[1].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[1].set_ylabel("accuracy (%)")
    ax[0].legend()
    ax[1].legend()
    fig.suptitle(title)
    return savefig(fig, path)
