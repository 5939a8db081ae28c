"""Evaluation harness: region classification, referring expressions and mislabel finding, all methods
in one run, on COCO-format data (instances JSON + images; referring expressions as in refcocos-val2017).

Reported over non-crowd instances. Outputs: a markdown table, a PNG chart and JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .backbone import Backbone
from .baselines import region_embeddings, supported_methods
from .images import load_rgb
from .zeroshot import SINGLE_TEMPLATE, class_embeddings, class_probabilities, mistakenness, templates_for

REFER_ALPHA = 5.0  # the paper's regulariser for referring expressions
TOP_KS = (1, 5, 10)


@dataclass
class Instances:
    """Non-crowd instances of a COCO-format folder, grouped by image."""

    folder: Path
    coco: object
    image_ids: List[int]
    class_names: List[str]

    def annotations(self, image_id: int) -> list:
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False))

    def image_path(self, image_id: int) -> Path:
        return self.folder / "images" / self.coco.loadImgs(image_id)[0]["file_name"]

    def class_of(self, ann: dict) -> str:
        return self.coco.loadCats(ann["category_id"])[0]["name"]


def load_instances(folder: Path, max_images: Optional[int] = None) -> Instances:
    from pycocotools.coco import COCO

    folder = Path(folder)
    coco = COCO(str(folder / "instances.json"))
    ids = sorted(i for i in coco.getImgIds() if coco.getAnnIds(imgIds=i, iscrowd=False))
    names = [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))]
    return Instances(folder, coco, ids[:max_images] if max_images else ids, names)


def embed_instances(backbone: Backbone, data: Instances, methods: Sequence[str], **inverter) -> Dict[str, dict]:
    """{method: {"ids": annotation ids, "emb": N x D, "labels": class names}} over all instances."""
    out = {m: {"ids": [], "emb": [], "labels": []} for m in methods}
    for image_id in data.image_ids:
        anns = data.annotations(image_id)
        masks = [data.coco.annToMask(a) > 0 for a in anns]
        image = load_rgb(data.image_path(image_id))  # decoded once for all methods
        for method in methods:
            kwargs = inverter if method == "maskinversion" else {}
            emb = region_embeddings(backbone, image, masks, method=method, **kwargs)
            keep = ~np.isnan(emb).any(axis=1)
            out[method]["ids"] += [a["id"] for a, k in zip(anns, keep) if k]
            out[method]["emb"].append(emb[keep])
            out[method]["labels"] += [data.class_of(a) for a, k in zip(anns, keep) if k]
    for method in methods:
        out[method]["emb"] = np.concatenate(out[method]["emb"]) if out[method]["emb"] else np.zeros((0, backbone.embed_dim))
    return out


def class_text(backbone: Backbone, names: List[str]) -> Dict[str, torch.Tensor]:
    """Class text embeddings with one template and with CLIP's ensemble (computed once per run)."""
    return {
        "single": class_embeddings(backbone, names, templates_for(SINGLE_TEMPLATE)),
        "ensemble": class_embeddings(backbone, names, templates_for("ensemble")),
    }


def classify(backbone: Backbone, data: Instances, embedded: Dict[str, dict], texts: Dict[str, torch.Tensor]) -> dict:
    """Acc@1/5/10 of ranking the class names for every instance, instance- and class-averaged.

    ``texts``: the class text embeddings per prompt mode (see :func:`class_text`)."""
    names = data.class_names
    results = {}
    for method, got in embedded.items():
        truth = np.array([names.index(label) for label in got["labels"]])
        results[method] = {}
        for prompt, text in texts.items():
            probs = class_probabilities(backbone, got["emb"], text)
            rank = (probs > probs[np.arange(len(truth)), truth][:, None]).sum(axis=1)
            row = {}
            for k in TOP_KS:
                hit = rank < k
                row[f"acc@{k}"] = float(hit.mean())
                row[f"class_acc@{k}"] = float(np.mean([hit[truth == c].mean() for c in np.unique(truth)]))
            results[method][prompt] = row
    return results


def refer(backbone: Backbone, data: Instances, expressions: list, methods: Sequence[str], **inverter) -> dict:
    """Pick, for each expression, the candidate mask whose embedding is closest to the text.

    Expressions sharing an image and candidate set are scored together: masks, image and texts are
    prepared once, and each method embeds the candidates once."""
    groups: Dict[tuple, list] = {}
    for item in expressions:
        groups.setdefault((item["image"], tuple(item["candidate_ids"])), []).append(item)
    hits = {m: [] for m in methods}
    ious = {m: [] for m in methods}
    inter_sum, union_sum = dict.fromkeys(methods, 0), dict.fromkeys(methods, 0)
    for (image_file, candidate_ids), items in groups.items():
        masks = [data.coco.annToMask(a) > 0 for a in data.coco.loadAnns(list(candidate_ids))]
        image = load_rgb(data.folder / image_file)
        texts = [backbone.encode_text([item["expression"]]).cpu()[0] for item in items]
        targets = [candidate_ids.index(item["target_id"]) for item in items]
        for method in methods:
            kwargs = dict(inverter, alpha=REFER_ALPHA) if method == "maskinversion" else {}
            emb = region_embeddings(backbone, image, masks, method=method, **kwargs)
            emb = torch.nn.functional.normalize(torch.as_tensor(np.nan_to_num(emb)), dim=-1)
            for text, target in zip(texts, targets):
                chosen = int(torch.argmax(emb @ text))
                inter = int((masks[chosen] & masks[target]).sum())
                union = int((masks[chosen] | masks[target]).sum())
                hits[method].append(chosen == target)
                ious[method].append(inter / union)
                inter_sum[method] += inter
                union_sum[method] += union
    return {
        m: {"acc@1": float(np.mean(hits[m])), "mIoU": float(np.mean(ious[m])), "oIoU": inter_sum[m] / union_sum[m]}
        for m in methods
    }


def mislabel(
    backbone: Backbone, data: Instances, embedded: Dict[str, dict], text: torch.Tensor, noise: float = 0.2, seed: int = 0
) -> dict:
    """Corrupt a seeded fraction of labels; rank instances by mistakenness (against the class text
    embeddings ``text``); AUROC and precision@k."""
    names = data.class_names
    results = {}
    for method, got in embedded.items():
        rng = np.random.default_rng(seed)
        truth = np.array([names.index(label) for label in got["labels"]])
        corrupted = rng.random(len(truth)) < noise
        noisy = truth.copy()
        offsets = rng.integers(1, len(names), len(truth))
        noisy[corrupted] = (truth[corrupted] + offsets[corrupted]) % len(names)
        probs = class_probabilities(backbone, got["emb"], text)
        scores = mistakenness(probs, noisy)
        k = int(corrupted.sum())
        top = np.argsort(-scores, kind="stable")[:k]
        results[method] = {"auroc": auroc(scores, corrupted), f"precision@{k}": float(corrupted[top].mean()),
                           "corrupted": k, "instances": len(truth)}
    return results


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) statistic, ties counted half."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def run(
    backbone: Backbone,
    folder: Path,
    out_dir: Path,
    tasks: Sequence[str] = ("classify", "refer", "mislabel"),
    methods: Optional[Sequence[str]] = None,
    refs: Optional[Path] = None,
    max_images: Optional[int] = None,
    iterations: int = 10,
    lr: float = 0.5,
    blocks: Optional[Sequence[int]] = None,
    noise: float = 0.2,
    title: str = "",
) -> dict:
    """All requested tasks and methods in one run; writes results.json, results.md and results.png."""
    data = load_instances(folder, max_images)
    methods = list(methods or supported_methods(backbone))
    inverter = {"iterations": iterations, "lr": lr, "blocks": blocks}
    results = {"title": title, "model": backbone.model_name, "pretrained": backbone.pretrained,
               "image_size": backbone.image_size, "images": len(data.image_ids), "iterations": iterations, "lr": lr,
               "blocks": list(blocks) if blocks else [-1]}
    if "classify" in tasks or "mislabel" in tasks:
        embedded = embed_instances(backbone, data, methods, **inverter)
        results["instances"] = len(embedded[methods[0]]["ids"])
        texts = class_text(backbone, data.class_names)
        if "classify" in tasks:
            results["classify"] = classify(backbone, data, embedded, texts)
        if "mislabel" in tasks:
            results["mislabel"] = mislabel(backbone, data, embedded, texts["ensemble"], noise=noise)
    if "refer" in tasks:
        refs = Path(refs) if refs else folder / "expressions.json"
        expressions = json.loads(refs.read_text())
        if max_images:  # the expressions of the first max_images images that have expressions
            kept = set(sorted({e["image_id"] for e in expressions})[:max_images])
            expressions = [e for e in expressions if e["image_id"] in kept]
        if not expressions:
            raise ValueError(f"no referring expressions in {refs}")
        results["refer"] = refer(backbone, data, expressions, methods, **inverter)  # the whole COCO file
        results["expressions"] = len(expressions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(markdown(results))
    chart(results, out_dir / "results.png")
    return results


def markdown(results: dict) -> str:
    """The tables in the paper's layout: one row per method."""
    lines = [f"# {results.get('title') or 'MaskInversion evaluation'}", "",
             f"Model {results['model']} / {results['pretrained']} at {results['image_size']} px, "
             f"{results['images']} images, MaskInversion {results['iterations']} iterations, lr {results['lr']}, "
             f"explained blocks {results['blocks']}.", ""]
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
    return "\n".join(lines)


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
