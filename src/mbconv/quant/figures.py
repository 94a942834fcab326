"""Figures of quantization noise: local SQNR per quantizer and SQNR per block (measured and predicted)."""

from __future__ import annotations

from pathlib import Path

from ..plotting import plt, savefig

__all__ = ["KIND_COLORS", "fig_site_sqnr", "fig_block_sqnr"]

KIND_COLORS = {"weight": "tab:blue", "act": "tab:orange", "se": "tab:green", "gate": "tab:red",
               "se_inner": "tab:olive", "add": "tab:purple", "input": "tab:gray", "pool": "tab:brown",
               "logits": "black"}


def fig_site_sqnr(sites: dict[str, dict], path: Path, title: str) -> Path:
    """Local SQNR of every quantizer in forward order, coloured by kind."""
    p = plt()
    fig, ax = p.subplots(figsize=(11, 3.8))
    names = list(sites)
    vals = [min(sites[s]["local_db"], 99.0) for s in names]
    ax.bar(range(len(names)), vals, color=[KIND_COLORS.get(sites[s]["kind"], "tab:cyan") for s in names])
    for k, c in KIND_COLORS.items():
        if any(v["kind"] == k for v in sites.values()):
            ax.bar([0], [0], color=c, label=k)
    step = max(1, len(names) // 40)
    ax.set_xticks(range(0, len(names), step), [names[i] for i in range(0, len(names), step)], rotation=80,
                  fontsize=5)
    ax.set_ylabel("local SQNR (dB)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=5)
    return savefig(fig, path)


def fig_block_sqnr(rows: list[dict], path: Path, title: str) -> Path:
    """Per-block SQNR: measured, and where present the analytic model and the Hutchinson-gain prediction."""
    p = plt()
    has_pred = any(r.get("model_db") is not None for r in rows)
    fig, axes = p.subplots(1, 2 if has_pred else 1, figsize=(11 if has_pred else 8, 3.8), squeeze=False)
    ax = axes[0][0]
    x = range(len(rows))
    ax.plot(x, [r["measured_db"] for r in rows], "o-", label="measured")
    if has_pred:
        ax.plot(x, [r["model_db"] for r in rows], "s--", label="analytic model")
    if any(r.get("gains_db") is not None for r in rows):
        ax.plot(x, [r["gains_db"] for r in rows], "^:", label="Hutchinson gains")
    ax.set_xticks(list(x), [r["block"] for r in rows], rotation=70, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    if has_pred:
        ax2 = axes[0][1]
        ax2.axhline(0, color="k", lw=0.5)
        ax2.bar([i - 0.2 for i in x], [r["model_err_db"] or 0 for r in rows], 0.4, label="model - measured")
        if any(r.get("gains_err_db") is not None for r in rows):
            ax2.bar([i + 0.2 for i in x], [r.get("gains_err_db") or 0 for r in rows], 0.4,
                    label="gains - measured")
        ax2.set_xticks(list(x), [r["block"] for r in rows], rotation=70, fontsize=6)
        ax2.set_ylabel("prediction error (dB)")
        ax2.legend(fontsize=7)
    return savefig(fig, path)
