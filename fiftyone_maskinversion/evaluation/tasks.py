"""The evaluation tasks: region classification, referring expressions and mislabel finding, on
COCO-format data (instances JSON + images; referring expressions as in refcocos-val2017), over
non-crowd instances."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .. import defaults
from ..core.backbone import Backbone
from ..core.inputs import load_rgb
from ..core.zeroshot import (
    class_embeddings,
    class_probabilities,
    mistakenness,
    templates_for,
)
from .baselines import region_embeddings

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
        "single": class_embeddings(backbone, names, templates_for(defaults.SINGLE_PROMPT)),
        "ensemble": class_embeddings(backbone, names, templates_for(defaults.PROMPT)),
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
            kwargs = dict(inverter, alpha=defaults.REFER_ALPHA) if method == "maskinversion" else {}
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
    backbone: Backbone, data: Instances, embedded: Dict[str, dict], text: torch.Tensor, noise: float = defaults.MISLABEL_NOISE,
    seed: int = 0,
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
    """Area under the ROC curve (scikit-learn); NaN when only one class is present."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))
