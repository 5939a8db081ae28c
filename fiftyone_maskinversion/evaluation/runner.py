"""``run``: every requested task and method in one run, written as results.json, results.md and results.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .. import defaults
from ..core.backbone import Backbone
from ..core.precision import resolve_precision
from .baselines import supported_methods
from .report import chart, markdown
from ..core.zeroshot import class_embeddings, templates_for
from .badmask import badmask
from .tasks import (
    class_text,
    classify,
    embed_instances,
    load_instances,
    mislabel,
    refer,
)

TASKS = ("classify", "refer", "mislabel", "badmask")


def run(
    backbone: Backbone,
    folder: Path,
    out_dir: Path,
    tasks: Sequence[str] = TASKS,
    methods: Optional[Sequence[str]] = None,
    refs: Optional[Path] = None,
    max_images: Optional[int] = None,
    iterations: int = defaults.ITERATIONS,
    lr: float = defaults.LR,
    blocks: Optional[Sequence[int]] = None,
    precision: str = defaults.PRECISION,
    noise: float = defaults.MISLABEL_NOISE,
    mask_noise: float = defaults.BADMASK_NOISE,
    title: str = "",
) -> dict:
    """All requested tasks and methods in one run; writes results.json, results.md and results.png."""
    data = load_instances(folder, max_images)
    methods = list(methods or supported_methods(backbone))
    inverter = {"iterations": iterations, "lr": lr, "blocks": blocks, "precision": precision}
    results = {"title": title, "model": backbone.model_name, "pretrained": backbone.pretrained,
               "image_size": backbone.image_size, "images": len(data.image_ids), "iterations": iterations, "lr": lr,
               "blocks": list(blocks) if blocks else [-1],
               "precision": resolve_precision(precision, backbone.device)}
    if "classify" in tasks or "mislabel" in tasks:
        embedded = embed_instances(backbone, data, methods, **inverter)
        results["instances"] = len(embedded[methods[0]]["ids"])
        texts = class_text(backbone, data.class_names)
        if "classify" in tasks:
            results["classify"] = classify(backbone, data, embedded, texts)
        if "mislabel" in tasks:
            results["mislabel"] = mislabel(backbone, data, embedded, texts["ensemble"], noise=noise)
    if "badmask" in tasks:
        text = class_embeddings(backbone, data.class_names, templates_for(defaults.SINGLE_PROMPT))
        results["badmask"] = badmask(backbone, data, methods, text, noise=mask_noise, **inverter)
        results["mask_noise"] = mask_noise
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


