"""The ``maskinversion`` command: the dataset actions of the Python API on a FiftyOne dataset name, plus demo."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _dataset(name: str):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        sys.exit(f"maskinversion: no FiftyOne dataset named {name!r} (see `fiftyone datasets list`)")
    return fo.load_dataset(name)


def _shard(text: Optional[str]):
    if not text:
        return None
    index, count = (int(part) for part in text.split("/"))
    return index, count


def _progress(done: int, total: int) -> None:
    print(f"\r  {done}/{total} samples", end="\n" if done == total else "", flush=True)


def cmd_compute(args) -> None:
    from . import compute_region_embeddings

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
        batch_size=args.batch_size,
        device=args.device,
        shard=_shard(args.shard),
        progress=_progress,
    )
    print(
        f"computed {summary.computed}, skipped (already done) {summary.skipped_existing}, "
        f"skipped (crowd) {summary.skipped_crowd}, failed {len(summary.failed)} "
        f"in {summary.seconds:.1f} s over {summary.samples} samples"
    )
    for sample_id, label_id, reason in summary.failed:
        print(f"  failed: sample {sample_id} label {label_id}: {reason}")


def cmd_relabel(args) -> None:
    from . import zero_shot_relabel

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
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
    from . import apply_relabel, undo_relabel

    dataset = _dataset(args.dataset)
    if args.undo:
        print(f"restored {undo_relabel(dataset, args.label_field)} labels")
    else:
        print(f"changed {apply_relabel(dataset, args.label_field, args.pred_field, args.threshold)} labels")


def cmd_mislabeled(args) -> None:
    from . import find_mislabeled
    from .dataset.relabel import default_pred_field

    pred_field = args.pred_field or default_pred_field(args.label_field)
    view = find_mislabeled(_dataset(args.dataset), args.label_field, pred_field).limit(args.limit)
    print(f"{'mistakenness':>12}  {'label':<20} {'predicted':<20} sample / label id")
    for sample in view:
        pred = sample[pred_field]
        print(f"{pred.mistakenness:12.3f}  {pred.gt_label:<20} {pred.label:<20} {sample.sample_id} / {pred.source_label_id}")


def cmd_search(args) -> None:
    from . import search_regions

    view = search_regions(
        _dataset(args.dataset),
        args.label_field,
        text=args.text,
        region_id=args.region_id,
        k=args.k,
        embeddings_field=args.embeddings_field,
    )
    for sample in view:
        region = sample[args.label_field]
        print(f"{region.label:<20} {sample.sample_id} / {region.id}  {sample.filepath}")


def cmd_delete(args) -> None:
    from . import delete_region_results

    print(delete_region_results(_dataset(args.dataset), args.label_field, args.embeddings_field, args.pred_field))


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(coco_dir=args.coco_dir, max_samples=args.max_samples, model_name=args.model,
             pretrained=args.pretrained, image_size=args.image_size, synthetic=args.synthetic,
             launch_app=args.app)


def cmd_eval(args) -> None:
    import tempfile
    from pathlib import Path

    from . import load_backbone
    from .evaluation import run
    from .synthetic import write_coco

    tasks = args.tasks or ["classify", "refer", "mislabel"]
    unknown = set(tasks) - {"classify", "refer", "mislabel"}
    if unknown:
        sys.exit(f"maskinversion eval: unknown task(s) {sorted(unknown)}; choose classify, refer, mislabel")
    if "refer" in tasks and not (args.refs or args.synthetic):
        sys.exit("maskinversion eval refer: pass --refs FILE (referring expressions) or --synthetic N")
    if args.synthetic:
        folder = write_coco(Path(tempfile.mkdtemp(prefix="mi-eval-scenes-")), seed=args.seed, count=args.synthetic)
        refs = folder / "expressions.json"
    else:
        folder, refs = Path(args.coco_dir), args.refs
    backbone = load_backbone(args.model, pretrained=args.pretrained or None, image_size=args.image_size, device=args.device)
    results = run(backbone, folder, Path(args.out), tasks=tasks,
                  methods=args.methods.split(",") if args.methods else None, refs=refs,
                  max_images=args.max_images, iterations=args.iterations, lr=args.lr, noise=args.noise,
                  blocks=[int(b) for b in args.blocks.split(",")] if args.blocks else None,
                  title=args.title)
    print((Path(args.out) / "results.md").read_text())
    print(f"written: {args.out}/results.md, results.json, results.png ({results['images']} images)")


def _common(parser: argparse.ArgumentParser, pred: bool = False) -> None:
    parser.add_argument("dataset", help="FiftyOne dataset name")
    parser.add_argument("--label-field", required=True, help="Detections, Polylines or Segmentation field")
    parser.add_argument("--embeddings-field", default="mi_embedding")
    if pred:
        parser.add_argument("--pred-field", default=None, help="default: <label-field>_mi_relabel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskinversion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compute", help="region embeddings, heatmaps and fidelity for a label field")
    _common(p)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default="openai", help="open_clip tag or checkpoint path ('' = random)")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--alpha", type=float, default=0.0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--include-crowd", action="store_true")
    p.add_argument("--batch-size", type=int, default=16, help="samples per database write")
    p.add_argument("--device", default=None)
    p.add_argument("--shard", default=None, help="i/k: process the i-th of k disjoint slices of the samples")
    p.set_defaults(func=cmd_compute)

    p = sub.add_parser("relabel", help="zero-shot relabel the embedded regions into a predictions field")
    _common(p, pred=True)
    p.add_argument("--classes", default=None, help="comma-separated vocabulary (default: the field's labels)")
    p.add_argument("--prompt", default="ensemble", help="'ensemble' or one template with {}")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_relabel)

    p = sub.add_parser("apply-relabel", help="apply (or --undo) confident relabels on the label field")
    _common(p, pred=True)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--undo", action="store_true")
    p.set_defaults(func=cmd_apply_relabel)

    p = sub.add_parser("mislabeled", help="print the regions most likely mislabeled")
    _common(p, pred=True)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_mislabeled)

    p = sub.add_parser("search", help="regions most similar to a text or to a region")
    _common(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--text")
    group.add_argument("--region-id")
    p.add_argument("--k", type=int, default=10)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("delete", help="delete a run's embeddings, heatmaps, predictions and index")
    _common(p, pred=True)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("demo", help="the whole workflow on a few COCO images")
    p.add_argument("--coco-dir", default=None, help="COCO-format folder (images/ + instances.json)")
    p.add_argument("--max-samples", type=int, default=6)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default="openai")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--synthetic", action="store_true", help="synthetic scenes with the model trained here")
    p.add_argument("--app", action="store_true", help="open the FiftyOne App on the result")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="classify / refer / mislabel evaluations of all methods")
    p.add_argument("tasks", nargs="*", help="classify, refer and/or mislabel (default: all three)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco-dir", help="COCO-format folder: images/ + instances.json")
    source.add_argument("--synthetic", type=int, metavar="N", help="N held-out synthetic scenes")
    p.add_argument("--refs", default=None, help="referring expressions JSON (refcocos-val2017 format)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the synthetic scenes")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default="openai")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--noise", type=float, default=0.2, help="fraction of labels corrupted for mislabel")
    p.add_argument("--blocks", default=None, help="explained blocks, e.g. -2,-1 (default: the last)")
    p.add_argument("--device", default=None)
    p.add_argument("--title", default="")
    p.add_argument("--out", default="eval-results")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
