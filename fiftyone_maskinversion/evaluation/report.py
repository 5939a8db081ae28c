"""The evaluation report: the tables in the paper's layout (markdown) and one bar chart per task."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tasks import TOP_KS


def markdown(results: dict) -> str:
    """The tables in the paper's layout: one row per method."""
    lines = [f"# {results.get('title') or 'MaskInversion evaluation'}", "",
             f"Model {results['model']} / {results['pretrained']} at {results['image_size']} px, "
             f"{results['images']} images, MaskInversion {results['iterations']} iterations, lr {results['lr']}, "
             f"explained blocks {results['blocks']}, precision {results.get('precision', 'fp32')}.", ""]
    if "classify" in results:
        lines += [f"## Class retrieval ({results['instances']} instances)", "",
                  "| method | prompts | Acc@1 | Acc@5 | Acc@10 | class Acc@1 | class Acc@5 | class Acc@10 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for method, by_prompt in results["classify"].items():
            for prompt, row in by_prompt.items():
                cells = [f"{100 * row[f'acc@{k}']:.1f}" for k in TOP_KS] + [f"{100 * row[f'class_acc@{k}']:.1f}" for k in TOP_KS]
                lines.append(f"| {method} | {prompt} | " + " | ".join(cells) + " |")
        lines.append("")
    if "refer" in results:
        lines += [f"## Referring expressions ({results['expressions']} expressions)", "",
                  "| method | Acc@1 | mIoU | oIoU |", "| --- | --- | --- | --- |"]
        for method, row in results["refer"].items():
            lines.append(f"| {method} | {100 * row['acc@1']:.1f} | {100 * row['mIoU']:.1f} | {100 * row['oIoU']:.1f} |")
        lines.append("")
    if "mislabel" in results:
        lines += ["## Mislabel finding", "", "| method | AUROC | precision@k | corrupted / instances |", "| --- | --- | --- | --- |"]
        for method, row in results["mislabel"].items():
            precision = next(v for key, v in row.items() if key.startswith("precision@"))
            lines.append(f"| {method} | {row['auroc']:.3f} | {precision:.3f} | {row['corrupted']} / {row['instances']} |")
        lines.append("")
    if "badmask" in results:
        lines += badmask_table(results["badmask"])
    return "\n".join(lines)


def _kinds(row: dict) -> list:
    return [key[len("auroc_"):] for key in row if key.startswith("auroc_")]


def badmask_table(scores: dict) -> list:
    """Markdown lines of the bad-mask table: one row per score, AUROC overall and per corruption kind."""
    kinds = _kinds(next(iter(scores.values())))
    lines = [f"## Bad-mask finding (corrupted: {' / '.join(kinds)})", "",
             "| score | AUROC | precision@k | " + " | ".join(f"AUROC {k}" for k in kinds) + " | corrupted / instances |",
             "| --- " * (4 + len(kinds)) + "|"]
    for method, row in scores.items():
        precision = next(v for key, v in row.items() if key.startswith("precision@"))
        cells = " | ".join(f"{row[f'auroc_{k}']:.3f}" for k in kinds)
        lines.append(f"| {method} | {row['auroc']:.3f} | {precision:.3f} | {cells} | {row['corrupted']} / {row['instances']} |")
    if "reason_right" in scores.get("maskinversion", {}):
        lines += ["", f"Corrupted masks whose reason names their kind: {100 * scores['maskinversion']['reason_right']:.1f}%."]
    return lines + [""]


def seeds_markdown(by_seed: dict, method: str = "maskinversion") -> str:
    """The bad-mask AUROC of one score per seed, the mean over seeds, overall and per corruption kind."""
    rows = {seed: result[method] for seed, result in by_seed.items()}
    kinds = _kinds(next(iter(rows.values())))
    columns = ["auroc", *(f"auroc_{k}" for k in kinds)] + (["reason_right"] if method == "maskinversion" else [])
    lines = [f"## Bad-mask AUROC of `{method}` per seed", "",
             "| seed | AUROC | " + " | ".join(f"AUROC {k}" for k in kinds) + " |"
             + (" reason right |" if "reason_right" in columns else ""), "| --- " * (1 + len(columns)) + "|"]
    for seed, row in rows.items():
        lines.append(f"| {seed} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    means = [float(np.mean([row[c] for row in rows.values()])) for c in columns]
    lines.append("| mean | " + " | ".join(f"**{v:.3f}**" for v in means) + " |")
    return "\n".join(lines + [""])


def chart(results: dict, path: Path) -> None:
    """One bar group per task metric (classification Acc@1 with ensemble prompts, refer Acc@1, AUROC)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "classify" in results:
        panels.append(("class retrieval Acc@1", {m: r["ensemble"]["acc@1"] for m, r in results["classify"].items()}))
    if "refer" in results:
        panels.append(("referring Acc@1", {m: r["acc@1"] for m, r in results["refer"].items()}))
    if "mislabel" in results:
        panels.append(("mislabel AUROC", {m: r["auroc"] for m, r in results["mislabel"].items()}))
    if "badmask" in results:
        panels.append(("bad-mask AUROC", {m: r["auroc"] for m, r in results["badmask"].items()}))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels):
        ax.bar(list(values), list(values.values()), color=["#d62728" if m == "maskinversion" else "#7f7f7f" for m in values])
        ax.set_title(name)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(results.get("title") or f"{results['model']} / {results['pretrained']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
