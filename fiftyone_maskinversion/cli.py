"""The ``maskinversion`` command: the FiftyOne layer's actions on a dataset by name, the demo and eval.

Errors print one line (``maskinversion: error: ...``) and exit with status 2; set
MASKINVERSION_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import defaults
from .core.precision import PRECISIONS


class CommandError(Exception):
    """A problem with the command line itself (reported like any other error)."""


def _dataset(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise CommandError(f"no FiftyOne dataset named {name!r} (see `fiftyone datasets list`)")
    return fo.load_dataset(name)


def _shard(text: Optional[str]):
    """``i/k`` -> (i, k), checked."""
    if not text:
        return None
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise CommandError(f"--shard {text!r}: expected i/k, e.g. 0/4 (the i-th of k slices, 0 <= i < k)")
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or index >= count:
        raise CommandError(f"--shard {text!r}: need k >= 1 and 0 <= i < k")
    return index, count


def _blocks(text: Optional[str]):
    if not text:
        return None
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise CommandError(f"--blocks {text!r}: expected comma-separated integers, e.g. -2,-1") from None


def _progress(done: int, total: int) -> None:
    print(f"\r  {done}/{total} samples", end="\n" if done == total else "", flush=True)


def cmd_compute(args) -> None:
    shard, blocks = _shard(args.shard), _blocks(args.blocks)  # checked before FiftyOne starts
    from .fo import compute_region_embeddings

    summary = compute_region_embeddings(
        _dataset(args.dataset),
        args.label_field,
        model_name=args.model,
        pretrained=args.pretrained or None,
        image_size=args.image_size,
        iterations=args.iterations,
        lr=args.lr,
        alpha=args.alpha,
        embeddings_field=args.embeddings_field,
        overwrite=args.overwrite,
        include_crowd=args.include_crowd,
        blocks=blocks,
        precision=args.precision,
        batch_size=args.batch_size,
        device=args.device,
        shard=shard,
        progress=_progress,
        regions_field=args.regions_field,
        heatmaps=args.heatmaps,
        heatmaps_dir=args.heatmaps_dir,
    )
    print(summary.describe())
    for sample_id, label_id, reason in summary.failed:
        print(f"  failed: sample {sample_id} label {label_id}: {reason}")


def cmd_relabel(args) -> None:
    from .core.zeroshot import classes_from_text
    from .fo import zero_shot_relabel

    classes = classes_from_text(args.classes)
    summary = zero_shot_relabel(
        _dataset(args.dataset),
        args.label_field,
        embeddings_field=args.embeddings_field,
        classes=classes,
        prompt=args.prompt,
        pred_field=args.pred_field,
        top_k=args.top_k,
        overwrite=args.overwrite,
    )
    print(f"wrote {summary.regions} predictions to {summary.pred_field!r}; {summary.changed} differ from the labels")


def cmd_apply_relabel(args) -> None:
    from .fo import apply_relabel, undo_relabel

    dataset = _dataset(args.dataset)
    ids = args.label_ids.split(",") if args.label_ids else None
    if args.undo:
        changes = undo_relabel(dataset, args.label_field, ids, args.embeddings_field, dry_run=args.dry_run)
    else:
        changes = apply_relabel(dataset, args.label_field, args.pred_field, args.threshold, args.embeddings_field,
                                label_ids=ids, include_low_fidelity=args.include_low_fidelity, dry_run=args.dry_run)
    print(changes.describe())
    for label_id, (before, after) in changes.changed.items():
        print(f"  {label_id}: {before} -> {after}")


def _number(value, width: int) -> str:
    """A float right-aligned in ``width`` characters with 3 decimals, or "-" where the value is missing."""
    return f"{value:{width}.3f}" if value is not None else f"{'-':>{width}}"


def cmd_mislabeled(args) -> None:
    from .fo import find_mislabeled, prediction_of
    from .fo.relabel import run_and_pred_field

    dataset = _dataset(args.dataset)
    _, field = run_and_pred_field(dataset, args.label_field, args.embeddings_field, args.pred_field)
    view = find_mislabeled(dataset, args.label_field, field, args.embeddings_field)
    print(f"{'mistakenness':>12}  {'label':<20} {'predicted':<20} sample / label id")
    for sample in view.limit(args.limit):
        pred = prediction_of(sample, field)
        print(f"{pred.mistakenness:12.3f}  {pred.gt_label:<20} {pred.label:<20} {sample.sample_id} / {pred.source_label_id}")


def cmd_badmasks(args) -> None:
    from .core.badmask import COMPONENTS
    from .core.zeroshot import classes_from_text
    from .fo import find_bad_masks, find_missing_regions, score_masks
    from .fo.runs import attribute_names, require_run

    dataset = _dataset(args.dataset)
    run = require_run(dataset, args.label_field, args.embeddings_field)
    summary = score_masks(dataset, args.label_field, args.embeddings_field,
                          classes=classes_from_text(args.classes), prompt=args.prompt, suggest_missing=not args.no_missing,
                          min_missing_score=args.min_missing_score, confirmation=args.confirmation,
                          overwrite=args.overwrite, progress=_progress)
    print(f"scored {summary.scored} regions ({summary.unscorable} unscorable, {summary.skipped_scored} already "
          "reviewed with these settings); "
          f"{summary.suggested} suggested missing regions; {len(summary.failed)} failed")
    for sample_id, label_id, reason in summary.failed:
        print(f"  failed: sample {sample_id} label {label_id}: {reason}")
    view = find_bad_masks(dataset, args.label_field, args.embeddings_field)
    names = attribute_names(args.embeddings_field)
    parts = "".join(f"{part:>13}" for part in COMPONENTS)
    print(f"{'mask score':>10}  {'label':<20} {'reason':<12}{parts}  sample / label id")
    for patch in view.limit(args.limit):
        region = patch[run.regions_field]
        values = "".join(_number(region[names[f"mask_{part}"]], 13) for part in COMPONENTS)
        print(f"{region[names['mask_mistakenness']]:10.3f}  {region.label:<20} {region[names['mask_reason']] or '':<12}"
              f"{values}  {patch.sample_id} / {region.id}")
    if summary.missing_field:
        print(f"suggested missing regions (field {summary.missing_field!r}):")
        for patch in find_missing_regions(dataset, args.label_field, args.embeddings_field).limit(args.limit):
            suggestion = patch[summary.missing_field]
            print(f"{suggestion.confidence:10.3f}  {suggestion.label:<20} confirmed {suggestion['confirmation']:.2f} "
                  f"box {[round(v, 3) for v in suggestion.bounding_box]}  {patch.sample_id}")


def cmd_search(args) -> None:
    from .fo import rank_regions

    dataset = _dataset(args.dataset)
    run, ranked = rank_regions(dataset, args.label_field, text=args.text, region_id=args.region_id, k=args.k,
                               embeddings_field=args.embeddings_field)
    patches = dataset.to_patches(run.regions_field)
    for label_id, score in ranked:
        patch = patches[label_id]
        print(f"{score:7.4f}  {patch[run.regions_field].label:<20} {patch.sample_id} / {label_id}  {patch.filepath}")


def cmd_index(args) -> None:
    from .fo import build_region_index

    options = {}
    for option in args.option:
        name, sep, value = option.partition("=")
        if not sep or not name:
            raise CommandError(f"--option {option!r}: expected KEY=VALUE, e.g. uri=/data/lancedb")
        options[name] = value
    results = build_region_index(_dataset(args.dataset), args.label_field, args.embeddings_field,
                                 overwrite=args.overwrite, backend=args.backend, **options)
    print(f"similarity index {results.key!r} ({args.backend}) over {results.total_index_size} regions")


def cmd_visualize(args) -> None:
    from .fo import visualize_regions

    results = visualize_regions(_dataset(args.dataset), args.label_field, args.embeddings_field, method=args.method,
                                overwrite=args.overwrite)
    print(f"{results.config.method} layout {results.key!r} of {len(results.current_points)} regions: "
          "open the App's Embeddings panel on this dataset and choose it")


def cmd_delete(args) -> None:
    from .fo import delete_region_results

    print(delete_region_results(_dataset(args.dataset), args.label_field, args.embeddings_field))


def cmd_runs(args) -> None:
    from .fo import list_region_runs

    for run in list_region_runs(_dataset(args.dataset)):
        s = run.settings
        print(f"{run.key}: {run.describe()}; {s['model_name']} / {s['pretrained']} @ {s['image_size']} px, "
              f"{s['activation']}, {s['precision']}, {s['iterations']} it, lr {s['lr']}, alpha {s['alpha']}, "
              f"blocks {s['blocks']}; "
              f"predictions {run.pred_fields}, index {run.brain_key}")


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(coco_dir=args.coco_dir, max_samples=args.max_samples, model_name=args.model,
             pretrained=args.pretrained, image_size=args.image_size, synthetic=args.synthetic,
             launch_app=args.app)


def cmd_eval(args) -> None:
    import tempfile
    from pathlib import Path

    from . import load_backbone
    from .evaluation import TASKS, run, run_seeds
    from .evaluation.badmask import MIXES
    from .synthetic import write_coco
    from .synthetic.scenes import WORLDS

    tasks = args.tasks or list(TASKS)
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise CommandError(f"eval: unknown task(s) {sorted(unknown)}; choose from {', '.join(TASKS)}")
    if "refer" in tasks and not (args.refs or args.synthetic):
        raise CommandError("eval refer: pass --refs FILE (referring expressions) or --synthetic N")
    if args.world not in WORLDS:
        raise CommandError(f"eval: unknown --world {args.world!r}; choose from {', '.join(WORLDS)}")
    if args.mask_kinds not in MIXES:
        raise CommandError(f"eval: --mask-kinds must be one of {', '.join(MIXES)}")
    seeds = _seeds(args.seeds) if args.seeds else None
    if seeds and not args.synthetic:
        raise CommandError("eval: --seeds needs --synthetic N")
    if args.synthetic is not None and args.synthetic < 1:
        raise CommandError("eval: --synthetic needs at least 1 scene")
    blocks = _blocks(args.blocks)
    backbone = load_backbone(args.model, pretrained=args.pretrained or None, image_size=args.image_size, device=args.device)
    settings = dict(tasks=tasks, methods=args.methods.split(",") if args.methods else None, max_images=args.max_images,
                    iterations=args.iterations, lr=args.lr, noise=args.noise, mask_noise=args.mask_noise,
                    mask_mix=MIXES[args.mask_kinds], blocks=blocks, precision=args.precision, title=args.title)
    if seeds:
        by_seed = run_seeds(backbone, seeds, args.synthetic, Path(args.out), world=args.world, **settings)
        for seed in seeds:
            print(f"written: {args.out}/seed-{seed}/results.md ({by_seed[seed]['images']} images)")
        if (Path(args.out) / "seeds.md").is_file():
            print((Path(args.out) / "seeds.md").read_text())
            print(f"written: {args.out}/seeds.md, seeds.json")
        return
    if args.synthetic:
        folder = write_coco(Path(tempfile.mkdtemp(prefix="mi-eval-scenes-")), seed=args.seed, count=args.synthetic,
                            world=args.world)
        refs = folder / "expressions.json"
    else:
        folder, refs = Path(args.coco_dir), args.refs
    results = run(backbone, folder, Path(args.out), refs=refs, **settings)
    print((Path(args.out) / "results.md").read_text())
    print(f"written: {args.out}/results.md, results.json, results.png ({results['images']} images)")


def _seeds(text: str) -> list:
    """Comma-separated distinct integer seeds."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"eval: --seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise CommandError(f"eval: --seeds must name distinct seeds, got {text!r}")
    return seeds


def _run_args(parser: argparse.ArgumentParser, pred: bool = False) -> None:
    """The arguments naming a run: dataset, label field, embeddings field (and a predictions field)."""
    parser.add_argument("dataset", help="FiftyOne dataset name")
    parser.add_argument("--label-field", required=True, help="Detections, Polylines or Segmentation field")
    parser.add_argument("--embeddings-field", default=defaults.EMBEDDINGS_FIELD)
    if pred:
        parser.add_argument("--pred-field", default=None, help="default: relabel_<label-field>_<embeddings-field>")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=defaults.MODEL_NAME, help="open_clip model name")
    parser.add_argument("--pretrained", default=defaults.PRETRAINED, help="open_clip tag or checkpoint path")
    parser.add_argument("--image-size", type=int, default=defaults.IMAGE_SIZE)
    parser.add_argument("--iterations", type=int, default=defaults.ITERATIONS)
    parser.add_argument("--lr", type=float, default=defaults.LR)
    parser.add_argument("--blocks", default=None, help="explained blocks, e.g. -2,-1 (default: the last)")
    parser.add_argument("--precision", default=defaults.PRECISION, choices=PRECISIONS,
                        help="fp32 (exact), bf16-mixed (faster, approximate), or auto (see the README)")
    parser.add_argument("--device", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskinversion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compute", help="region embeddings, heatmaps and fidelity for a label field")
    _run_args(p)
    _model_args(p)
    p.add_argument("--alpha", type=float, default=defaults.ALPHA)
    p.add_argument("--overwrite", action="store_true", help="recompute every region")
    p.add_argument("--include-crowd", action="store_true")
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help="samples per database write")
    p.add_argument("--shard", default=None, help="i/k: process the i-th of k disjoint slices of the samples")
    p.add_argument("--regions-field", default=None, help="for a Segmentation field: the derived regions field "
                   "(default <field>_regions)")
    p.add_argument("--heatmaps", choices=defaults.HEATMAP_STORAGES, default=defaults.HEATMAPS,
                   help="where heatmaps go: companion documents, PNG files (map_path), or nowhere")
    p.add_argument("--heatmaps-dir", default=None, help="with --heatmaps files: the folder (default: "
                   f"{defaults.HEATMAPS_DIR} under FiftyOne's dataset directory)")
    p.set_defaults(func=cmd_compute)

    p = sub.add_parser("relabel", help="zero-shot relabel the embedded regions into a predictions field")
    _run_args(p, pred=True)
    p.add_argument("--classes", default=None, help="comma-separated vocabulary (default: the field's labels)")
    p.add_argument("--prompt", default=defaults.PROMPT, help="'ensemble' or one template with {}")
    p.add_argument("--top-k", type=int, default=defaults.TOP_K)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_relabel)

    p = sub.add_parser("apply-relabel", help="apply (or --undo) confident relabels on the label field")
    _run_args(p, pred=True)
    p.add_argument("--threshold", type=float, default=defaults.RELABEL_THRESHOLD)
    p.add_argument("--undo", action="store_true", help="undo the latest applied relabel of each region")
    p.add_argument("--label-ids", default="", help="comma-separated label ids: only these regions")
    p.add_argument("--include-low-fidelity", action="store_true", help="also relabel regions whose inversion Dice "
                   "is below the low-fidelity threshold")
    p.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
    p.set_defaults(func=cmd_apply_relabel)

    p = sub.add_parser("mislabeled", help="print the regions most likely mislabeled")
    _run_args(p, pred=True)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_mislabeled)

    p = sub.add_parser("badmasks", help="score every embedded region's mask, print the likely bad masks and the "
                       "suggested missing regions")
    _run_args(p)
    p.add_argument("--classes", default=None, help="comma-separated vocabulary (default: the field's labels)")
    p.add_argument("--prompt", default=defaults.PROMPT, help="'ensemble' or one template with {}")
    p.add_argument("--no-missing", action="store_true", help="do not suggest missing regions")
    p.add_argument("--min-missing-score", type=float, default=defaults.MIN_MISSING_SCORE)
    p.add_argument("--confirmation", type=float, default=defaults.MISSING_CONFIRMATION,
                   help="least p(class | MaskInversion embedding of a suggested box)")
    p.add_argument("--overwrite", action="store_true", help="rescore regions that have a mask score")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_badmasks)

    p = sub.add_parser("search", help="regions most similar (cosine) to a text or to a region")
    _run_args(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--text")
    group.add_argument("--region-id")
    p.add_argument("--k", type=int, default=defaults.SEARCH_K)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("index", help="build the similarity index the App's search uses")
    _run_args(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--backend", default=defaults.INDEX_BACKEND, help="a FiftyOne Brain similarity backend: sklearn (in memory), "
                   "lancedb, qdrant, milvus, mongodb, elasticsearch, pgvector, ...")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend parameter, e.g. uri=/data/lancedb (repeatable; the rest come from brain's config)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("visualize", help="a 2-D layout of the region embeddings for the App's Embeddings panel")
    _run_args(p)
    p.add_argument("--method", default=None, help="umap, tsne or pca (default: umap when umap-learn is installed, "
                   "else tsne)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("delete", help="delete one run's embeddings, heatmaps, predictions and index")
    _run_args(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("runs", help="list the MaskInversion runs of a dataset")
    p.add_argument("dataset", help="FiftyOne dataset name")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("demo", help="the whole workflow on a few COCO images (offline: synthetic scenes)")
    p.add_argument("--coco-dir", default=None, help="COCO-format folder (images/ + instances.json)")
    p.add_argument("--max-samples", type=int, default=6)
    p.add_argument("--model", default=defaults.MODEL_NAME)
    p.add_argument("--pretrained", default=defaults.PRETRAINED)
    p.add_argument("--image-size", type=int, default=defaults.IMAGE_SIZE)
    p.add_argument("--synthetic", action="store_true", help="synthetic scenes with the model trained here")
    p.add_argument("--app", action="store_true", help="open the FiftyOne App on the result")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="classify / refer / mislabel / badmask evaluations of all methods")
    p.add_argument("tasks", nargs="*", help="classify, refer, mislabel and/or badmask (default: all four)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco-dir", help="COCO-format folder: images/ + instances.json")
    source.add_argument("--synthetic", type=int, metavar="N", help="N held-out synthetic scenes")
    p.add_argument("--refs", default=None, help="referring expressions JSON (refcocos-val2017 format)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the synthetic scenes")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (with --synthetic): one run per seed and a "
                   "per-seed summary (seeds.md); the held-out seeds are 7,4242,11,99 (2024 tuned the mask score)")
    p.add_argument("--world", default="objects", help="synthetic scenes: 'objects' (named by their own pixels) or "
                   "'context' (named by their surroundings)")
    p.add_argument("--mask-kinds", default="swap,shift,erode", help="badmask corruptions: swap,shift,erode or "
                   "swap,shift,erode,dilate")
    _model_args(p)
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--noise", type=float, default=defaults.MISLABEL_NOISE, help="fraction of labels corrupted for mislabel")
    p.add_argument("--mask-noise", type=float, default=defaults.BADMASK_NOISE,
                   help="fraction of masks corrupted for badmask")
    p.add_argument("--title", default="")
    p.add_argument("--out", default="eval-results")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # one clear line per error; the traceback only when asked for
        if os.environ.get("MASKINVERSION_DEBUG"):
            raise
        message = str(err) if isinstance(err, (CommandError, ValueError)) else f"{type(err).__name__}: {err}"
        print(f"maskinversion: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
