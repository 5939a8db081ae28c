"""``run``: every requested task and method in one run, written as results.json, results.md and results.png;
``run_seeds``: the same on synthetic scenes of several seeds, with a per-seed bad-mask summary."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from .. import defaults
from ..core.backbone import Backbone
from ..core.precision import resolve_precision
from .baselines import supported_methods
from .report import chart, markdown, seeds_markdown
from ..core.zeroshot import class_embeddings, templates_for
from .badmask import CORRUPTIONS, badmask
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
    mask_mix: Optional[dict] = None,
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
        results["badmask"] = badmask(backbone, data, methods, text, noise=mask_noise, mix=mask_mix or CORRUPTIONS,
                                     **inverter)
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


def run_seeds(backbone: Backbone, seeds: Sequence[int], scenes: int, out_dir: Path, world: str = "objects",
              title: str = "", **settings) -> dict:
    """:func:`run` on ``scenes`` synthetic scenes of each seed (``out_dir``/seed-<seed>/); with the
    badmask task, writes ``out_dir``/seeds.md and seeds.json: the bad-mask AUROC of each score per
    seed, the mean over seeds and the per-kind AUROC. Returns {seed: that seed's results}."""
    from ..synthetic import write_coco

    seeds = [int(seed) for seed in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    if scenes < 1:
        raise ValueError(f"scenes must be at least 1, got {scenes}")
    out_dir = Path(out_dir)
    by_seed = {}
    with tempfile.TemporaryDirectory(prefix="mi-eval-scenes-") as scratch:
        for seed in seeds:
            folder = write_coco(Path(scratch) / str(seed), seed=seed, count=scenes, world=world)
            by_seed[seed] = run(backbone, folder, out_dir / f"seed-{seed}",
                                title=f"{title or f'Synthetic {world} scenes'}, seed {seed}", **settings)
    badmasks = {seed: result["badmask"] for seed, result in by_seed.items() if "badmask" in result}
    if badmasks:
        (out_dir / "seeds.json").write_text(json.dumps(badmasks, indent=1))
        (out_dir / "seeds.md").write_text("\n".join(seeds_markdown(badmasks, method) for method in next(iter(badmasks.values()))))
    return by_seed
