"""The comparison report: a table and four plots, as Markdown (PNG files beside it) and as
one self-contained HTML page (images embedded)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenmixers.text import format_table

__all__ = ["PLOTS", "summary_rows", "summary_table", "write_report"]

PLOTS = {
    "accuracy_vs_params.png": "Test accuracy against parameters",
    "accuracy_vs_resolution.png": "Test accuracy against test resolution",
    "scaling.png": "Inference throughput and peak memory against resolution (log-log)",
    "training_curves.png": "Training curves",
}


def _eval_sizes(records: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({row["img_size"] for r in records for row in r["eval"]})


def _top1(record: dict[str, Any], size: int) -> float | None:
    for row in record["eval"]:
        if row["img_size"] == size and "top1" in row:
            return float(row["top1"])
    return None


def _bench_at(record: dict[str, Any], size: int) -> dict[str, Any]:
    for row in record.get("bench", []):
        if row["img_size"] == size:
            return row
    return {}


def summary_rows(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    sizes = _eval_sizes(records)
    header = ["family", "model", "params", "MMACs", "train time",
              *[f"top-1 @{s}" for s in sizes], "infer img/s", "peak MB"]
    rows = []
    for r in records:
        b = _bench_at(r, r["train_size"])
        tops = [_top1(r, s) for s in sizes]
        rows.append([
            r["label"], r["model"], f"{r['params'] / 1e6:.3f}M", f"{r['macs'] / 1e6:.1f}",
            f"{r['train_time_s']:.0f}s",
            *[f"{t:.2f}" if t is not None else "n/a" for t in tops],
            f"{b['infer_img_s']:.0f}" if "infer_img_s" in b else "-",
            f"{b['peak_mem_mb']:.0f}" if "peak_mem_mb" in b else "-",
        ])
    return header, rows


def summary_table(records: Sequence[dict[str, Any]]) -> str:
    header, rows = summary_rows(records)
    return format_table(rows, header, "ll" + "r" * (len(header) - 2))


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plots(records: Sequence[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    def plain_ticks(axis: Any, values: Sequence[float] | None = None) -> None:
        # log axes label 3x10^1; people read 28, 56, 112
        if values:
            axis.set_ticks(sorted(set(values)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())

    colors = {r["family"]: f"C{i}" for i, r in enumerate(records)}
    written = []

    # 1. accuracy vs parameters
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in records:
        top = _top1(r, r["train_size"])
        if top is None:
            continue
        ax.scatter(r["params"] / 1e6, top, s=60, color=colors[r["family"]], label=r["label"])
        ax.annotate(r["label"], (r["params"] / 1e6, top), textcoords="offset points",
                    xytext=(6, 4), fontsize=9)
    params = [r["params"] / 1e6 for r in records]
    if max(params) / min(params) > 5:
        ax.set_xscale("log")
        plain_ticks(ax.xaxis)
        ax.set_xlabel("parameters (millions, log scale)")
    else:
        ax.set_xlabel("parameters (millions)")
    ax.set_ylabel(f"test top-1 (%) at {records[0]['train_size']} px")
    ax.set_title(PLOTS["accuracy_vs_params.png"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_params.png", dpi=120)
    plt.close(fig)
    written.append("accuracy_vs_params.png")

    # 2. accuracy vs test resolution
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in records:
        pts = [(row["img_size"], row["top1"]) for row in r["eval"] if "top1" in row]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", color=colors[r["family"]], label=r["label"])
    ax.axvline(records[0]["train_size"], color="grey", ls=":", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("test resolution (pixels; dotted: training resolution)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(PLOTS["accuracy_vs_resolution.png"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_resolution.png", dpi=120)
    plt.close(fig)
    written.append("accuracy_vs_resolution.png")

    # 3. throughput and memory vs resolution, log-log, with guides for linear and
    # quadratic cost in the number of tokens (tokens grow with resolution squared)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    all_sizes = []
    for r in records:
        rows = sorted((b for b in r.get("bench", []) if "infer_img_s" in b),
                      key=lambda b: b["img_size"])
        if not rows:
            continue
        xs = [b["img_size"] for b in rows]
        all_sizes += xs
        ax1.plot(xs, [b["infer_img_s"] for b in rows], marker="o", color=colors[r["family"]],
                 label=r["label"])
        ax2.plot(xs, [max(b["peak_mem_mb"], 0.1) for b in rows], marker="o",
                 color=colors[r["family"]], label=r["label"])
    if all_sizes:
        lo, hi = min(all_sizes), max(all_sizes)
        ref = max((b["infer_img_s"] for r in records for b in r.get("bench", [])
                   if b.get("img_size") == lo and "infer_img_s" in b), default=None)
        if ref and hi > lo:
            for slope, style, text in ((-2, "--", "cost linear in tokens"),
                                       (-4, ":", "cost quadratic in tokens")):
                ax1.plot([lo, hi], [ref, ref * (hi / lo) ** slope], color="grey", ls=style,
                         lw=1, label=text)
    for ax, ylabel in ((ax1, "inference throughput (images/s)"),
                       (ax2, "peak inference memory (MB above the model)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_ticks(ax.xaxis, all_sizes)
        ax.set_xlabel("input resolution (pixels, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    batch = next((b.get("batch_size") for r in records for b in r.get("bench", [])
                  if "batch_size" in b), "?")
    fig.suptitle(f"{PLOTS['scaling.png']}, batch {batch}")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)
    written.append("scaling.png")

    # 4. training curves
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    for r in records:
        curve = [c for c in r.get("curves", []) if "epoch" in c]
        if not curve:
            continue
        ep = [c["epoch"] for c in curve]
        ax1.plot(ep, [c["top1"] for c in curve], marker="o", color=colors[r["family"]],
                 label=r["label"])
        ax2.plot(ep, [c["train_loss"] for c in curve], marker="o", color=colors[r["family"]],
                 label=r["label"])
    ax1.set_ylabel("test top-1 (%)")
    ax2.set_ylabel("training loss (label-smoothed cross-entropy)")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(PLOTS["training_curves.png"])
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)
    written.append("training_curves.png")
    return written


def _notes(records: Sequence[dict[str, Any]]) -> list[str]:
    notes = []
    for r in records:
        for row in r["eval"]:
            if "error" in row:
                notes.append(f"{r['label']} cannot run at {row['img_size']} px: "
                             f"{row['error'].splitlines()[0]}")
        for b in r.get("bench", []):
            for err in b.get("errors", []):
                notes.append(f"{r['label']} benchmark at {b['img_size']} px: {err}")
    bench = next((b for r in records for b in r.get("bench", []) if "threads" in b), None)
    if bench:
        notes.append(
            f"Throughput: median of 5 timed batches of {bench['batch_size']} after 2 warm-up, "
            f"{bench['threads']} threads on {bench['device']}, torch {bench['torch']}. Peak "
            "memory: rise of the process's peak resident set during inference, in a fresh "
            "process per measurement."
        )
    notes.append("Accuracy is that of the final epoch's weights (not the best epoch).")
    return notes


def write_report(records: Sequence[dict[str, Any]], out: Path, *, title: str) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into ``out``."""
    out = Path(out)
    plots = _plots(records, out) if records else []
    header, rows = summary_rows(records)
    recipe = records[0]["curves"][-1] if records and records[0].get("curves") else {}
    epochs = records[0]["epochs"] if records else 0
    notes = _notes(records)
    md = [f"# {title}", "",
          f"Every model trained {epochs} epochs with the same recipe, seed and data; "
          f"MMACs per image at {records[0]['train_size'] if records else '?'} px.", "",
          _markdown_table(header, rows), ""]
    for name in plots:
        md += [f"## {PLOTS[name]}", "", f"![{PLOTS[name]}]({name})", ""]
    md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    (out / "report.md").write_text("\n".join(md))

    def img(name: str) -> str:
        data = base64.b64encode((out / name).read_bytes()).decode()
        return (f'<figure><img alt="{html.escape(PLOTS[name])}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(PLOTS[name])}'
                "</figcaption></figure>")

    table = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in header],
             "</tr></thead><tbody>"]
    for row in rows:
        table.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    table.append("</tbody></table>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }}
th:nth-child(-n+2), td:nth-child(-n+2) {{ text-align: left; }}
thead th {{ background: #f4f4f4; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Every model trained {epochs} epochs with the same recipe, seed and data.
Last learning rate {recipe.get('lr', 0):.3g}.</p>
{''.join(table)}
{''.join(img(p) for p in plots)}
<h2>Notes</h2><ul>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>
</body></html>
"""
    (out / "report.html").write_text(page)
    return {"md": out / "report.md", "html": out / "report.html",
            **{p: out / p for p in plots}}
