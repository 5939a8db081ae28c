"""FiftyOne plugin: thin operators over fiftyone_maskinversion.fo (they gather inputs, call it, report progress
and end with a summary and the next step) and the MaskInversion panel (one region's results and actions).

Every operator maps the App's view back to the user's dataset first (fo.targets), so each one runs from
every view the package opens: patches views, search results, the heatmaps dataset, a selection of patches.
"""

import os
import socket
import urllib.parse

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.categories import Categories

from fiftyone_maskinversion import defaults
from fiftyone_maskinversion.core.precision import PRECISIONS
from fiftyone_maskinversion.core.zeroshot import classes_from_text
from fiftyone_maskinversion.fo import (
    apply_relabel,
    build_region_index,
    compute_region_embeddings,
    delete_region_results,
    find_bad_masks,
    find_missing_regions,
    find_mislabeled,
    heatmaps_dataset,
    list_region_runs,
    score_masks,
    search_regions,
    undo_relabel,
    visualize_regions,
    zero_shot_relabel,
)
from fiftyone_maskinversion.fo import heatmaps as heatmap_store
from fiftyone_maskinversion.fo.appearance import (
    BAD_MASK_OPACITY,
    group_package_fields,
    heatmaps_look,
    package_fields,
    review_color_scheme,
    tile_fields,
)
from fiftyone_maskinversion.fo.heatmaps import SELECTION_VIEW, region_heatmaps_view, source_dataset
from fiftyone_maskinversion.fo.preview import MAX_REGIONS, PANEL_HEIGHT, data_uri, draw_region, preview_data_uri
from fiftyone_maskinversion.fo.region_review import REVIEW_TAGS, review_region, runs_of_field
from fiftyone_maskinversion.fo.regions import SUPPORTED_TYPES, list_path
from fiftyone_maskinversion.fo.targets import only_regions, resolve_target

DELEGATION_HELP = ("Background runs are not set up here: start the App with FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true "
                   "and run `fiftyone delegated launch` in a terminal (see the README's App section); until then "
                   "this runs in the App's process.")


def _user_dataset(ctx):
    """The user's dataset behind the App's view (never a patches or heatmaps dataset); None without one."""
    return resolve_target(ctx.view).dataset if ctx.dataset is not None else None


def _label_field_input(ctx, inputs, embedded_only=False):
    """A dropdown of the fields the operator applies to (the open view's field first); returns the field
    chosen (the default until the user picks), None (with a message in the form) when there is none."""
    dataset = _user_dataset(ctx)
    if dataset is None:
        fields = []
    elif embedded_only:
        fields = sorted({run.label_field for run in list_region_runs(dataset)})
    else:
        fields = sorted(set(dataset.get_field_schema(embedded_doc_type=SUPPORTED_TYPES))
                        - set(package_fields(dataset)))
    if not fields:
        inputs.view("no_field", types.Error(label="No field has MaskInversion embeddings yet: run 'MaskInversion: "
                                                  "compute region embeddings' first." if embedded_only else
                                            "This dataset has no Detections, Polylines or Segmentation field."))
        return None
    shown = resolve_target(ctx.view).label_field
    default = shown if shown in fields else fields[0]
    choices = types.Dropdown()
    for name in fields:
        choices.add_choice(name, label=name)
    inputs.enum("label_field", choices.values(), default=default, label="Label field", view=choices)
    return ctx.params.get("label_field") or default


def _embeddings_field_input(ctx, inputs):
    dataset = _user_dataset(ctx)
    names = sorted({run.embeddings_field for run in list_region_runs(dataset)}) if dataset else []
    shown = resolve_target(ctx.view).embeddings_field if dataset else None
    default = shown or (defaults.EMBEDDINGS_FIELD if not names or defaults.EMBEDDINGS_FIELD in names else names[0])
    inputs.str("embeddings_field", default=default, label="Embeddings attribute",
               description=f"runs on this dataset: {', '.join(names) or 'none'}")


def _form(inputs, label):
    return types.Property(inputs, view=types.View(label=label))


def _run_form(ctx, label, more=None):
    """A form of a field with a run and its embeddings attribute, then ``more(inputs)`` if given."""
    inputs = types.Object()
    if _label_field_input(ctx, inputs, embedded_only=True):
        _embeddings_field_input(ctx, inputs)
        if more:
            more(inputs)
    return _form(inputs, label)


def _progress(ctx, what):
    def report(done, total):
        ctx.set_progress(progress=done / max(total, 1), label=f"{what}: {done}/{total} samples")

    return report


def _target(ctx):
    """The user's dataset and regions behind the operator's target (current view, selection, ...)."""
    return resolve_target(ctx.target_view())


def _show(ctx, view, dataset, opacity=None, color_by=None, kind=None, embeddings_field=None):
    """Open a review view in the App, with masks drawn so that the object shows through (the dataset's
    scheme, set to the review scheme if the user has none, applied to the open App as well; ``opacity``
    and ``color_by`` override it in the open App only); a review view of ``kind`` shows its score (and
    a bad mask's reason) on each tile."""
    scheme = review_color_scheme(dataset)
    if group_package_fields(dataset):
        ctx.ops.reload_dataset()
    ctx.ops.set_view(view)
    ctx.trigger("set_color_scheme", params={"color_by": color_by or scheme.color_by,
                                            "opacity": opacity or scheme.opacity})
    if kind is not None:
        ctx.ops.set_active_fields(tile_fields(view, kind, embeddings_field or defaults.EMBEDDINGS_FIELD))


def _prompt_input(inputs, default=defaults.PROMPT):
    prompts = types.RadioGroup()
    for prompt in dict.fromkeys((defaults.PROMPT, defaults.SINGLE_PROMPT, default)):
        prompts.add_choice(prompt, label="CLIP template ensemble" if prompt == defaults.PROMPT else prompt)
    inputs.enum("prompt", prompts.values(), default=default, label="Prompts", view=prompts)


def _vocabulary_inputs(ctx, inputs):
    """Field, run, vocabulary and prompts: what the zero-shot steps ask; False when no field has a run."""
    if not _label_field_input(ctx, inputs, embedded_only=True):
        return False
    _embeddings_field_input(ctx, inputs)
    inputs.str("classes", default="", label="Classes (comma-separated; empty: the field's labels)")
    _prompt_input(inputs)
    return True


def _blocks(text):
    return [int(b) for b in str(text).split(",") if b.strip()] if text not in (None, "") else None


def _delegation_available():
    """Whether the App can queue delegated operations (FiftyOne's legacy orchestrator, run by
    `fiftyone delegated launch`); otherwise asking for it leaves the user at "not yet configured"."""
    return bool(fo.config.allow_legacy_orchestrators)


def _delegation_input(inputs):
    if _delegation_available():
        inputs.bool("delegate", default=False, label="Run in the background (delegated)?")
    else:
        inputs.view("delegation_help", types.Notice(label=DELEGATION_HELP))


class _Summarised(foo.Operator):
    """An operator (named by ``op_name`` / ``op_label``) whose output is one readable paragraph (what
    happened, the next step), built from its results by :meth:`summary`."""

    op_name, op_label = "", ""

    @property
    def config(self):
        return foo.OperatorConfig(name=self.op_name, label=self.op_label, dynamic=True)

    def summary(self, results):
        raise NotImplementedError

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.view("summary", types.Notice(label=self.summary(ctx.results or {})))
        return types.Property(outputs)


class _Delegable(_Summarised):
    """An operator that runs immediately or, if the user asks and the App is set up for it, queued for
    `fiftyone delegated launch`."""

    op_description = ""

    @property
    def config(self):
        return foo.OperatorConfig(
            name=self.op_name,
            label=self.op_label,
            description=self.op_description,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=_delegation_available(),
        )

    def resolve_delegation(self, ctx):
        return bool(ctx.params.get("delegate", False)) and _delegation_available()


def _run_defaults(ctx, field):
    """The compute form's defaults: the settings of the run already on ``field`` (so a recompute does
    not silently switch models), else the package defaults."""
    dataset = _user_dataset(ctx)
    embeddings = ctx.params.get("embeddings_field") or defaults.EMBEDDINGS_FIELD
    runs = [r for r in list_region_runs(dataset) if r.label_field == field] if dataset else []
    runs.sort(key=lambda r: r.embeddings_field != embeddings)
    settings = runs[0].settings if runs else {}
    blocks = settings.get("blocks")
    return {
        "model_name": settings.get("model_name", defaults.MODEL_NAME),
        "pretrained": settings.get("pretrained") or defaults.PRETRAINED,
        "image_size": settings.get("image_size", defaults.IMAGE_SIZE),
        "iterations": settings.get("iterations", defaults.ITERATIONS),
        "lr": settings.get("lr", defaults.LR),
        "alpha": settings.get("alpha", defaults.ALPHA),
        "blocks": ",".join(str(b) for b in blocks) if blocks else "",
        "precision": settings.get("precision", defaults.PRECISION),
        "from_run": runs[0].describe() if runs else None,
    }


class ComputeRegionEmbeddings(_Delegable):
    op_name = "compute_region_embeddings"
    op_label = "MaskInversion: compute region embeddings"
    op_description = "Localized CLIP embeddings, LeGrad heatmaps and Dice/IoU for every region of a label field"

    def resolve_input(self, ctx):
        inputs = types.Object()
        field = _label_field_input(ctx, inputs)
        if field:
            start = _run_defaults(ctx, field)
            if start["from_run"]:
                inputs.view("from_run", types.Notice(label=f"Settings of the existing run ({start['from_run']})"))
            inputs.str("model_name", default=start["model_name"], label="open_clip model")
            inputs.str("pretrained", default=start["pretrained"], label="Pretrained tag or checkpoint path",
                       description="an open_clip tag (openai, laion2b_s34b_b88k, ...) or a local checkpoint file")
            inputs.int("image_size", default=start["image_size"], label="Image size (px)")
            inputs.int("iterations", default=start["iterations"], label="Iterations")
            inputs.float("lr", default=start["lr"], label="Learning rate")
            inputs.float("alpha", default=start["alpha"], label="Regularisation alpha (5 for referring expressions)")
            inputs.str("blocks", default=start["blocks"], label="Explained blocks",
                       description="comma-separated block indices, e.g. -2,-1 (empty: the last block)")
            precisions = types.RadioGroup()
            for value in PRECISIONS:
                precisions.add_choice(value, label=value)
            inputs.enum("precision", precisions.values(), default=start["precision"], label="Precision",
                        description="fp32 is exact; bf16-mixed is faster and approximate (see the README)",
                        view=precisions)
            _embeddings_field_input(ctx, inputs)
            inputs.bool("overwrite", default=False, label="Recompute regions that already have an embedding?")
            inputs.bool("include_crowd", default=False, label="Embed crowd regions (iscrowd=1) too?")
            inputs.int("batch_size", default=defaults.BATCH_SIZE, label="Samples per database write")
            inputs.str("device", default="", label="Device", description="e.g. cuda:0 or cpu (empty: cuda if available)")
            storages = types.RadioGroup()
            for value, label in (("database", "in the database (companion dataset)"), ("files", "as PNG files"),
                                 ("none", "none")):
                storages.add_choice(value, label=label)
            inputs.enum("heatmaps", storages.values(), default=defaults.HEATMAPS, label="Heatmaps", view=storages,
                        description="files: large datasets (the database keeps only a path per region)")
            if ctx.params.get("heatmaps") == "files":
                inputs.str("heatmaps_dir", default="", label="Heatmaps folder",
                           description=f"empty: {defaults.HEATMAPS_DIR} under FiftyOne's dataset directory")
            if _delegation_available():
                inputs.int("num_shards", default=1, label="Shards (parallel delegated workers)")
            inputs.view_target(ctx)
            _delegation_input(inputs)
        return _form(inputs, "Compute region embeddings")

    def execute(self, ctx):
        params = ctx.params
        shards = int(params.get("num_shards", 1) or 1)
        if shards > 1 and "shard_index" not in params:
            return _queue_shards(ctx, self.uri, shards)
        target = _target(ctx)
        summary = compute_region_embeddings(
            target.regions,
            params["label_field"],
            model_name=params.get("model_name", defaults.MODEL_NAME),
            pretrained=params.get("pretrained", defaults.PRETRAINED),
            image_size=int(params.get("image_size", defaults.IMAGE_SIZE)),
            iterations=int(params.get("iterations", defaults.ITERATIONS)),
            lr=float(params.get("lr", defaults.LR)),
            alpha=float(params.get("alpha", defaults.ALPHA)),
            blocks=_blocks(params.get("blocks")),
            precision=params.get("precision", defaults.PRECISION),
            embeddings_field=params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
            overwrite=bool(params.get("overwrite", False)),
            include_crowd=bool(params.get("include_crowd", False)),
            batch_size=int(params.get("batch_size", defaults.BATCH_SIZE)),
            device=params.get("device") or None,
            shard=(int(params.get("shard_index", 0)), shards) if shards > 1 else None,
            progress=_progress(ctx, "MaskInversion"),
            heatmaps=params.get("heatmaps") or defaults.HEATMAPS,
            heatmaps_dir=(params.get("heatmaps_dir") or None) if params.get("heatmaps") == "files" else None,
        )
        review_color_scheme(target.dataset)  # the review look from the first open of the dataset on
        group_package_fields(target.dataset)
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "computed": summary.computed,
            "recomputed_stale": summary.recomputed_stale,
            "skipped_existing": summary.skipped_existing,
            "skipped_crowd": summary.skipped_crowd,
            "failed": len(summary.failed),
            "samples": summary.samples,
            "regions_field": summary.regions_field,
            "heatmaps_dataset": summary.heatmaps_dataset,
            "seconds": round(summary.seconds, 1),
        }

    def summary(self, results):
        if "queued_shards" in results:
            return (f"Queued {results['queued_shards']} shards. They run where `fiftyone delegated launch` runs; "
                    "when they are done, run 'MaskInversion: zero-shot relabel regions'.")
        return (f"Embedded {results.get('computed', 0)} regions of {results.get('samples', 0)} samples in "
                f"{results.get('seconds', 0)} s ({results.get('recomputed_stale', 0)} recomputed, "
                f"{results.get('skipped_existing', 0)} already done, {results.get('skipped_crowd', 0)} crowd regions "
                f"skipped, {results.get('failed', 0)} failed). Next: 'MaskInversion: zero-shot relabel regions', "
                "then 'show likely mislabeled regions'; open the MaskInversion panel on a region to see its heatmap.")


def _queue_shards(ctx, uri, shards):
    """Queue one delegated operation per shard, for `fiftyone delegated launch` workers to share; each
    shard's view is the form's target (selection included), resolved here."""
    target = _target(ctx).regions.view()  # a view even when the target is the whole dataset
    for index in range(shards):
        params = dict(ctx.params, shard_index=index, delegate=True, view_target="CURRENT_VIEW")
        foo.execute_operator(uri, ctx={"dataset": target._dataset.name, "view": target, "params": params},
                             request_delegation=True)
    return {"queued_shards": shards}


class ZeroShotRelabel(_Delegable):
    op_name = "zero_shot_relabel"
    op_label = "MaskInversion: zero-shot relabel regions"
    op_description = "Predicted class, confidence, top-k and mistakenness for every embedded region"

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _vocabulary_inputs(ctx, inputs):
            inputs.int("top_k", default=defaults.TOP_K, label="Top-k classes to keep")
            inputs.str("pred_field", default="", label="Predictions field",
                       description="empty: relabel_<label field>_<embeddings attribute>")
            inputs.bool("overwrite", default=False, label="Overwrite this run's existing predictions field?")
            inputs.view_target(ctx)
            _delegation_input(inputs)
        return _form(inputs, "Zero-shot relabel")

    def execute(self, ctx):
        params = ctx.params
        target = _target(ctx)
        summary = zero_shot_relabel(
            target.regions,
            params["label_field"],
            embeddings_field=params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
            classes=classes_from_text(params.get("classes")),
            prompt=params.get("prompt", defaults.PROMPT),
            pred_field=params.get("pred_field") or None,
            top_k=int(params.get("top_k", defaults.TOP_K)),
            overwrite=bool(params.get("overwrite", False)),
        )
        group_package_fields(target.dataset)
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"pred_field": summary.pred_field, "regions": summary.regions, "changed": summary.changed}

    def summary(self, results):
        return (f"Predicted a class for {results.get('regions', 0)} regions into '{results.get('pred_field')}'; "
                f"{results.get('changed', 0)} differ from their annotation. Next: 'MaskInversion: show likely "
                "mislabeled regions', then accept or fix each one in the MaskInversion panel.")


class ApplyRelabel(_Summarised):
    op_name = "apply_relabel"
    op_label = "MaskInversion: apply or undo relabels"

    def resolve_input(self, ctx):
        def more(inputs):
            inputs.str("pred_field", default="", label="Predictions field (empty: the run's default)")
            inputs.float("threshold", default=defaults.RELABEL_THRESHOLD, label="Minimum confidence")
            inputs.bool("undo", default=False, label="Undo: restore the labels before the latest apply instead")
            inputs.bool("include_low_fidelity", default=False,
                        label="Also relabel low-fidelity regions (inversion Dice below the threshold)?")
            inputs.bool("preview", default=True, label="Preview only: show what would change, write nothing",
                        description="untick to apply; labels edited since the prediction are never changed")
            inputs.view_target(ctx)
        return _run_form(ctx, "Apply relabel", more)

    def execute(self, ctx):
        params = ctx.params
        target = _target(ctx)
        field = params["label_field"]
        embeddings = params.get("embeddings_field", defaults.EMBEDDINGS_FIELD)
        if params.get("preview"):
            changes = apply_relabel(target.regions, field, params.get("pred_field") or None,
                                    float(params.get("threshold", defaults.RELABEL_THRESHOLD)), embeddings,
                                    include_low_fidelity=bool(params.get("include_low_fidelity", False)),
                                    dry_run=True)
            run = runs_of_field(target.dataset, field)[0]
            if changes.changed:
                _show(ctx, only_regions(target.dataset, run.regions_field, list(changes.changed))
                      .to_patches(run.regions_field), target.dataset)
            return {"changed": changes.count, "preview": True, "describe": changes.describe()}
        if params.get("undo"):
            changes = undo_relabel(target.regions, field, embeddings_field=embeddings)
        else:
            changes = apply_relabel(target.regions, field, params.get("pred_field") or None,
                                    float(params.get("threshold", defaults.RELABEL_THRESHOLD)), embeddings,
                                    include_low_fidelity=bool(params.get("include_low_fidelity", False)))
        ctx.ops.reload_dataset()
        return {"changed": changes.count, "describe": changes.describe()}

    def summary(self, results):
        text = results.get("describe") or f"{results.get('changed', 0)} labels changed."
        if results.get("preview"):
            return (f"Preview, nothing written: {text} The view shows those regions; run again with 'Preview "
                    "only' unticked to apply.")
        return f"{text} Undo any region from the MaskInversion panel, or all with 'Undo' here."


class FindMislabeled(_Summarised):
    op_name = "find_mislabeled"
    op_label = "MaskInversion: show likely mislabeled regions"

    def resolve_input(self, ctx):
        def more(inputs):
            inputs.str("pred_field", default="", label="Predictions field (empty: the run's default)")
        return _run_form(ctx, "Find mislabeled regions", more)

    def execute(self, ctx):
        params = ctx.params
        dataset = _user_dataset(ctx)
        view = find_mislabeled(dataset, params["label_field"], params.get("pred_field") or None,
                               params.get("embeddings_field", defaults.EMBEDDINGS_FIELD))
        _show(ctx, view, dataset, color_by="field",  # one colour for the annotation, one for the prediction
              kind="mislabeled", embeddings_field=params.get("embeddings_field", defaults.EMBEDDINGS_FIELD))
        return {"regions": len(view)}

    def summary(self, results):
        return (f"{results.get('regions', 0)} regions, the most likely mislabeled first (sorted by class "
                "mistakenness; low-fidelity regions left out). Each tile draws the annotation (the label field) "
                "and the prediction (the 'relabel_' field) in their fields' colours, as in the sidebar. Open one "
                "and the MaskInversion panel to accept, fix or tag it.")


class FindBadMasks(_Delegable):
    op_name = "find_bad_masks"
    op_label = "MaskInversion: find bad masks and missing regions"
    op_description = "Mask mistakenness of every embedded region (class-text LeGrad maps) and suggested missing regions"

    def resolve_input(self, ctx):
        inputs = types.Object()
        field = _label_field_input(ctx, inputs, embedded_only=True)
        if field:
            _embeddings_field_input(ctx, inputs)
            dataset, run = _user_dataset(ctx), _run_of_form(ctx, field)
            unscored = (_labelled(dataset, run, run.embeddings_field)
                        - _labelled(dataset, run, f"{run.embeddings_field}_mask_review"))
            inputs.bool("score", default=unscored > 0, label="Score masks now (then open the view)?",
                        description=f"{unscored} embedded regions have no mask score yet; unticked, the view of the "
                                    "stored scores opens at once")
            if ctx.params.get("score", unscored > 0):
                last = (run.mask_review or {}).get("settings") or {}  # the latest review's settings: a rescore
                inputs.str("classes", default=",".join(last.get("classes") or []),  # with others needs overwrite
                           label="Classes (comma-separated; empty: the field's labels)")
                _prompt_input(inputs, last.get("prompt", defaults.PROMPT))
                inputs.bool("suggest_missing", default=bool(last.get("missing_field", True)),
                            label="Suggest missing regions?")
                inputs.float("min_missing_score", default=last.get("min_missing_score", defaults.MIN_MISSING_SCORE),
                             label="Least suggestion score")
                inputs.float("confirmation", default=last.get("confirmation", defaults.MISSING_CONFIRMATION),
                             label="Least p(class | MaskInversion embedding of a suggested box)")
                inputs.bool("overwrite", default=False, label="Rescore regions that already have a mask score?")
                _delegation_input(inputs)
            inputs.view_target(ctx)
        return _form(inputs, "Find bad masks")

    def execute(self, ctx):
        params = ctx.params
        target = _target(ctx)
        field = params.get("embeddings_field", defaults.EMBEDDINGS_FIELD)
        result = {"scored": 0, "suggested": 0, "failed": 0, "missing_field": ""}
        if params.get("score", True):
            summary = score_masks(target.regions, params["label_field"], field,
                                  classes=classes_from_text(params.get("classes")),
                                  prompt=params.get("prompt", defaults.PROMPT),
                                  suggest_missing=bool(params.get("suggest_missing", True)),
                                  min_missing_score=float(params.get("min_missing_score", defaults.MIN_MISSING_SCORE)),
                                  confirmation=float(params.get("confirmation", defaults.MISSING_CONFIRMATION)),
                                  overwrite=bool(params.get("overwrite")), progress=_progress(ctx, "Mask review"))
            result = {"scored": summary.scored, "suggested": summary.suggested, "failed": len(summary.failed),
                      "missing_field": summary.missing_field or ""}
        if not ctx.delegated:
            view = find_bad_masks(target.samples, params["label_field"], field)
            _show(ctx, view, target.dataset, BAD_MASK_OPACITY, kind="bad_masks", embeddings_field=field)
            result["regions"] = len(view)
        return result

    def summary(self, results):
        scored = (f"Scored {results.get('scored', 0)} masks ({results.get('failed', 0)} failed). "
                  if results.get("scored") or results.get("failed") else "")
        missing = (f" {results.get('suggested', 0)} missing regions suggested in '{results['missing_field']}': "
                   "'MaskInversion: show suggested missing regions' opens them." if results.get("missing_field")
                   else "")
        shown = f"{results['regions']} regions, " if "regions" in results else "The view shows "
        return (f"{scored}{shown}the most likely bad masks first (sorted by mask mistakenness).{missing} Open a "
                "region with the MaskInversion panel for the score's components and reason.")


def _run_of_form(ctx, label_field):
    """The run a form is about: of ``label_field`` and the form's embeddings attribute (else the first)."""
    runs = runs_of_field(_user_dataset(ctx), label_field)
    chosen = [r for r in runs if r.embeddings_field == ctx.params.get("embeddings_field")]
    return (chosen or runs)[0]


def _labelled(dataset, run, attribute):
    """How many of the run's regions hold a value of ``attribute`` (0 where it was never declared)."""
    path = f"{list_path(dataset, run.regions_field)}.{attribute}"
    return dataset.count(path) if dataset.has_field(path) else 0


class ShowMissingRegions(_Summarised):
    op_name = "show_missing_regions"
    op_label = "MaskInversion: show suggested missing regions"

    def resolve_input(self, ctx):
        return _run_form(ctx, "Suggested missing regions")

    def execute(self, ctx):
        dataset = _user_dataset(ctx)
        embeddings = ctx.params.get("embeddings_field", defaults.EMBEDDINGS_FIELD)
        view = find_missing_regions(dataset, ctx.params["label_field"], embeddings)
        _show(ctx, view, dataset, kind="missing", embeddings_field=embeddings)
        return {"regions": len(view), "field": view.patches_field}

    def summary(self, results):
        return (f"{results.get('regions', 0)} suggested missing regions ('{results.get('field')}'), the most "
                "confident first: a class the image shows where no annotated region covers it. Add the real ones "
                "to your labels (e.g. with FiftyOne's annotate()).")


class ShowRegionHeatmaps(_Summarised):
    op_name = "show_region_heatmaps"
    op_label = "MaskInversion: show heatmaps of the selection"

    def resolve_input(self, ctx):
        inputs = types.Object()
        if ctx.dataset is not None and source_dataset(ctx.dataset) is not None:
            inputs.view("back", types.Notice(label="Back to the dataset these heatmaps explain"))
        elif not (ctx.selected_labels or ctx.selected or (ctx.view is not None and ctx.view._is_patches)):
            inputs.view("none", types.Warning(label="Select regions (or samples) in the App first"))
        return _form(inputs, "Region heatmaps")

    def execute(self, ctx):
        source = source_dataset(ctx.dataset)
        if source is not None:  # back from the heatmaps to the regions they explain
            ctx.ops.open_dataset(source.name)
            return {"dataset": source.name}
        label_ids = [label["label_id"] for label in ctx.selected_labels]
        target = resolve_target(ctx.view.select(ctx.selected) if ctx.selected else ctx.view)
        if not label_ids and target.label_ids is not None:  # patches: the regions shown (or selected)
            label_ids = target.label_ids
        sample_ids = [] if label_ids else ctx.selected
        view = region_heatmaps_view(target.dataset, label_ids=label_ids, sample_ids=sample_ids, save=True)
        if not len(view):
            raise ValueError("no heatmap of the selection: select embedded regions (or samples with some)")
        heatmaps_look(view._dataset)
        name = view._dataset.name
        return {"dataset": name, "heatmaps": len(view), "preview": preview_data_uri(view),
                "open": f"/datasets/{urllib.parse.quote(name)}?view={SELECTION_VIEW}"}

    def summary(self, results):
        return (f"{results.get('heatmaps', 0)} region heatmaps, saved as the heatmaps dataset's view "
                f"'{SELECTION_VIEW}' (link below; the first {MAX_REGIONS} are drawn here).")

    def resolve_output(self, ctx):
        if "preview" not in (ctx.results or {}):
            return None
        outputs = types.Object()
        outputs.view("summary", types.Notice(label=self.summary(ctx.results)))
        outputs.str("preview", label="LeGrad heatmaps (colour scale at the right, region outlined)",
                    view=types.ImageView())
        outputs.str("open", label="Open them all, full size", view=types.LinkView())
        return types.Property(outputs)


class SearchRegions(_Summarised):
    op_name = "search_regions"
    op_label = "MaskInversion: search regions by text or region"

    def resolve_input(self, ctx):
        def more(inputs):
            selected = bool(ctx.selected_labels) or len(_query_regions(ctx)) == 1
            inputs.str("text", default="", required=not selected,
                       label="Text query" + (" (empty: use the selected region)" if selected else ""))
            inputs.int("k", default=defaults.SEARCH_K, label="Number of regions")
        return _run_form(ctx, "Search regions", more)

    def execute(self, ctx):
        params = ctx.params
        text = (params.get("text") or "").strip()
        region_id = None
        if not text:
            regions = [label["label_id"] for label in ctx.selected_labels] or _query_regions(ctx)
            if len(regions) != 1:
                raise ValueError("type a text query or select one region in the App")
            region_id = regions[0]
        dataset = _user_dataset(ctx)
        view = search_regions(
            dataset,
            params["label_field"],
            text=text or None,
            region_id=region_id,
            k=int(params.get("k", defaults.SEARCH_K)),
            embeddings_field=params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
        )
        _show(ctx, view, dataset, kind="search")
        return {"regions": len(view)}

    def summary(self, results):
        return (f"The {results.get('regions', 0)} regions most similar to the query, best first. The view bar "
                "reads the query where the run has a region index ('MaskInversion: build the region index').")


def _query_regions(ctx):
    """The regions a search without text can start from: the selected patches or heatmaps, or the one shown."""
    view = ctx.view.select(ctx.selected) if ctx.selected else ctx.view
    target = resolve_target(view)
    return list(target.label_ids or []) if target.kind != "samples" else []


class BuildRegionIndex(_Delegable):
    op_name = "build_region_index"
    op_label = "MaskInversion: build the region index (search in words)"
    op_description = "A similarity index over the run's regions for the App's search, which then reads the words"

    def resolve_input(self, ctx):
        def more(inputs):
            inputs.bool("overwrite", default=False, label="Rebuild this run's existing index?")
            inputs.str("backend", default=defaults.INDEX_BACKEND, label="Similarity backend",
                       description="a FiftyOne Brain backend: sklearn (in memory), lancedb, qdrant, milvus, mongodb, "
                                   "... (its settings come from your brain config)")
            inputs.str("uri", default="", label="Backend URI (optional)", description="e.g. a LanceDB folder")
            _delegation_input(inputs)
        return _run_form(ctx, "Build the region index", more)

    def execute(self, ctx):
        dataset = _user_dataset(ctx)
        ctx.set_progress(progress=0.0, label="Building the region index")
        options = {"uri": ctx.params["uri"]} if ctx.params.get("uri") else {}
        results = build_region_index(dataset, ctx.params["label_field"],
                                     ctx.params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
                                     overwrite=bool(ctx.params.get("overwrite")),
                                     backend=ctx.params.get("backend") or defaults.INDEX_BACKEND, **options)
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"brain_key": results.key, "regions": results.total_index_size,
                "text": bool(results.config.supports_prompts)}

    def summary(self, results):
        words = ("Text queries work: 'MaskInversion: search regions' (or the App's similarity search) now shows "
                 "your words in the view bar." if results.get("text") else
                 "This run's model cannot be reloaded here, so the index answers region-to-region queries only.")
        return f"Index '{results.get('brain_key')}' of {results.get('regions', 0)} regions. {words}"


class VisualizeRegions(_Delegable):
    op_name = "visualize_regions"
    op_label = "MaskInversion: embeddings layout of the regions"
    op_description = "A 2-D layout of the region embeddings for the Embeddings panel (FiftyOne Brain)"

    def resolve_input(self, ctx):
        def more(inputs):
            methods = types.RadioGroup()
            for value, label in (("", "default (UMAP if installed, else t-SNE)"), ("umap", "UMAP"),
                                 ("tsne", "t-SNE"), ("pca", "PCA")):
                methods.add_choice(value, label=label)
            inputs.enum("method", methods.values(), default="", label="Method", view=methods)
            inputs.bool("overwrite", default=False, label="Replace this run's existing layout?")
            inputs.view_target(ctx)
            _delegation_input(inputs)
        return _run_form(ctx, "Embeddings layout", more)

    def execute(self, ctx):
        params = ctx.params
        ctx.set_progress(progress=0.0, label="Computing the layout (UMAP / t-SNE take minutes on many regions)")
        results = visualize_regions(_target(ctx).regions, params["label_field"],
                                    params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
                                    method=params.get("method") or None, overwrite=bool(params.get("overwrite")))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"brain_key": results.key, "regions": len(results.current_points)}

    def summary(self, results):
        return (f"Layout '{results.get('brain_key')}' of {results.get('regions', 0)} regions. Next: open the "
                "Embeddings panel (+ above the grid), choose this key and colour by a label attribute.")


class DeleteRegionResults(_Summarised):
    op_name = "delete_region_results"
    op_label = "MaskInversion: delete results"

    def resolve_input(self, ctx):
        def more(inputs):
            inputs.view("warning", types.Warning(
                label="Deletes this run's embeddings, heatmaps, relabel predictions and index (other runs stay)"))
        return _run_form(ctx, "Delete MaskInversion results", more)

    def execute(self, ctx):
        deleted = delete_region_results(_user_dataset(ctx), ctx.params["label_field"],
                                        ctx.params.get("embeddings_field", defaults.EMBEDDINGS_FIELD))
        ctx.ops.reload_dataset()
        return {"deleted_attributes": len(deleted["attributes"]), "deleted_heatmaps": deleted["heatmaps"],
                "deleted_pred_fields": len(deleted["pred_fields"])}

    def summary(self, results):
        return (f"Deleted {results.get('deleted_attributes', 0)} label attributes, "
                f"{results.get('deleted_heatmaps', 0)} heatmaps and {results.get('deleted_pred_fields', 0)} output "
                "fields of this run; your labels and other runs are untouched.")


class RegionPanel(foo.Panel):
    """The MaskInversion panel. In the sample modal: the open region's heatmap, scores, prediction and the
    run's settings, with actions on that region (accept, set a label, tag, undo) and next / previous. In
    the grid: the dataset's runs with their counts and settings, and buttons opening each review view.
    It only reads what runs stored; where something is missing it says which operator to run."""

    @property
    def config(self):
        return foo.PanelConfig(name="maskinversion_panel", label="MaskInversion", surfaces="grid modal",
                               category=Categories.CURATE,
                               help_markdown="One region's MaskInversion results and the curator's actions on it")

    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_current_sample(self, ctx):
        ctx.panel.set_state("message", "")
        self._refresh(ctx)

    def on_change_selected_labels(self, ctx):
        self._refresh(ctx)

    def on_change_view(self, ctx):
        self._refresh(ctx)

    def _region(self, ctx):
        """(dataset, label id, field) of the region the curator looks at, else (dataset, None, None)."""
        dataset = _user_dataset(ctx)
        if ctx.selected_labels:
            label = ctx.selected_labels[0]
            target = resolve_target(ctx.view)
            field = target.run.regions_field if target.run and target.kind == "patches" else label["field"]
            return dataset, label["label_id"], field
        if ctx.current_sample:
            target = resolve_target(ctx.view.select(ctx.current_sample))
            if target.label_ids and target.run is not None and target.field == target.run.regions_field:
                return dataset, target.label_ids[0], target.field
        return dataset, None, None

    def _refresh(self, ctx):
        dataset, label_id, field = self._region(ctx)
        if ctx.current_sample is None:
            ctx.panel.set_state("mode", "runs")
            ctx.panel.set_state("runs", _runs_overview(dataset) if dataset is not None else [])
            return
        ctx.panel.set_state("mode", "region")
        ctx.panel.set_state("region", None)
        if label_id is None:
            ctx.panel.set_state("notice", "Click a region in the image (or open a patch of a MaskInversion review "
                                          "view) to see its heatmap, prediction and scores.")
            return
        try:
            review = review_region(dataset, label_id, resolve_target(ctx.view).embeddings_field, field)
        except ValueError as err:
            ctx.panel.set_state("notice", str(err))
            return
        ctx.panel.set_state("notice", "")
        ctx.panel.set_state("region", {"label_id": review.label_id, "field": review.field,
                                       "label_field": review.run.label_field,
                                       "embeddings_field": review.run.embeddings_field})
        ctx.panel.set_state("text", _review_text(review))
        caption = f"{review.label}  dice {review.dice:.2f}" if review.dice is not None else review.label
        ctx.panel.set_data("picture", data_uri(draw_region(review.filepath, review.heatmap, review.mask, caption,
                                                           PANEL_HEIGHT), "jpeg"))
        ctx.panel.set_data("topk", [{"type": "bar", "orientation": "h", "x": [p for _, p in review.topk][::-1],
                                     "y": [name for name, _ in review.topk][::-1]}])

    def _act(self, ctx, action):
        """Run ``action(dataset, view of the one region, region state)``; its return is the message shown."""
        state = ctx.panel.get_state("region")
        if not state:
            ctx.panel.set_state("message", "No region is open.")
            return
        dataset = _user_dataset(ctx)
        one = only_regions(dataset, state["field"], [state["label_id"]])
        try:
            message = action(dataset, one, state)
        except ValueError as err:
            message = f"Not done: {err}"
        ctx.panel.set_state("message", message)
        ctx.ops.reload_samples()
        self._refresh(ctx)

    def accept(self, ctx):
        def do(dataset, one, state):  # the curator chose this one region: whatever its confidence or fidelity
            changes = apply_relabel(dataset, state["label_field"], threshold=0.0,
                                    embeddings_field=state["embeddings_field"], label_ids=[state["label_id"]],
                                    include_low_fidelity=True)
            return f"Accept prediction: {changes.describe()}."

        self._act(ctx, do)

    def undo(self, ctx):
        def do(dataset, one, state):
            changes = undo_relabel(dataset, state["label_field"], label_ids=[state["label_id"]],
                                   embeddings_field=state["embeddings_field"])
            return f"Undo: {changes.describe()}."

        self._act(ctx, do)

    def set_label(self, ctx):
        new_label = (ctx.panel.get_state("new_label") or "").strip()

        def do(dataset, one, state):
            if not new_label:
                raise ValueError("type the new label first")
            path = f"{list_path(dataset, state['field'])}.label"
            old = one.values(path, unwind=True)[0]
            dataset.set_label_values(path, {state["label_id"]: new_label})
            heatmap_store.update_labels(dataset, state["field"], {state["label_id"]: new_label})
            return f"Label set by hand: {old!r} -> {new_label!r} (an apply never overwrites it)."

        self._act(ctx, do)

    def _tag(self, ctx, tag):
        def do(dataset, one, state):
            one.untag_labels([t for t in REVIEW_TAGS if t != tag], label_fields=state["field"])
            one.tag_labels(tag, label_fields=state["field"])
            return f"Tagged {tag!r} (a FiftyOne label tag: filter on it, or send it to annotate())."

        self._act(ctx, do)

    def tag_wrong_class(self, ctx):
        self._tag(ctx, REVIEW_TAGS[0])

    def tag_bad_mask(self, ctx):
        self._tag(ctx, REVIEW_TAGS[1])

    def tag_ok(self, ctx):
        self._tag(ctx, REVIEW_TAGS[2])

    def _step(self, ctx, offset):
        ids = ctx.view.values("id")
        if ctx.current_sample not in ids:
            return
        position = ids.index(ctx.current_sample) + offset
        if 0 <= position < len(ids):
            ctx.ops.open_sample(id=ids[position])

    def next_region(self, ctx):
        self._step(ctx, 1)

    def previous_region(self, ctx):
        self._step(ctx, -1)

    def open_review(self, ctx):
        """Open one review view of one run (the grid's buttons)."""
        dataset = _user_dataset(ctx)
        field, embeddings, kind = (ctx.params.get(k) for k in ("label_field", "embeddings_field", "kind"))
        try:
            if kind == "heatmaps":
                companion = heatmaps_dataset(dataset)
                heatmaps_look(companion)
                ctx.ops.open_dataset(companion.name)
                return
            opener = {"mislabeled": find_mislabeled, "bad_masks": find_bad_masks,
                      "missing": find_missing_regions}[kind]
            _show(ctx, opener(dataset, field, embeddings_field=embeddings), dataset,
                  BAD_MASK_OPACITY if kind == "bad_masks" else None, "field" if kind == "mislabeled" else None,
                  kind=kind, embeddings_field=embeddings)
        except ValueError as err:
            ctx.panel.set_state("message", str(err))

    def render(self, ctx):
        panel = types.Object()
        message = ctx.panel.get_state("message")
        if message:
            panel.md(message, name="message")
        if ctx.panel.get_state("mode") == "runs":
            self._render_runs(ctx, panel)
        elif ctx.panel.get_state("region"):
            self._render_region(ctx, panel)
        else:
            panel.md(ctx.panel.get_state("notice") or "", name="notice")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=1))

    def _render_region(self, ctx, panel):
        panel.view("picture", types.ImageView(height="360px"))
        panel.md(ctx.panel.get_state("text") or "", name="text")
        panel.plot("topk", layout={"title": {"text": "Top-k zero-shot prediction"}, "height": 220,
                                   "margin": {"l": 110, "r": 10, "t": 30, "b": 30}, "xaxis": {"range": [0, 1]}})
        actions = panel.h_stack("actions", align_x="left", gap=1)
        actions.btn("accept", label="Accept prediction", on_click=self.accept, variant="contained")
        actions.btn("undo", label="Undo", on_click=self.undo)
        actions.btn("previous", label="Previous", on_click=self.previous_region)
        actions.btn("next", label="Next", on_click=self.next_region)
        tags = panel.h_stack("tags", align_x="left", gap=1)
        tags.btn("tag_wrong_class", label=REVIEW_TAGS[0], on_click=self.tag_wrong_class)
        tags.btn("tag_bad_mask", label=REVIEW_TAGS[1], on_click=self.tag_bad_mask)
        tags.btn("tag_ok", label=REVIEW_TAGS[2], on_click=self.tag_ok)
        panel.str("new_label", label="Another label (then Set label)")
        panel.btn("set_label", label="Set label", on_click=self.set_label)

    def _render_runs(self, ctx, panel):
        runs = ctx.panel.get_state("runs") or []
        if not runs:
            panel.md("No MaskInversion run on this dataset yet: run 'MaskInversion: compute region embeddings' "
                     "(backtick key).", name="no_runs")
        for number, run in enumerate(runs):
            panel.md(run["text"], name=f"run_{number}")
            buttons = panel.h_stack(f"open_{number}", align_x="left", gap=1)
            for kind, label in (("mislabeled", "Mislabeled"), ("bad_masks", "Bad masks"),
                                ("missing", "Missing regions"), ("heatmaps", "Heatmaps")):
                buttons.btn(f"open_{number}_{kind}", label=label, on_click=self.open_review,
                            params={"label_field": run["label_field"], "embeddings_field": run["embeddings_field"],
                                    "kind": kind})


def _percent(value):
    return "n/a" if value is None else f"{value:.2f}"


def _review_text(review):
    """The panel's words about one region: what is annotated vs predicted, the scores and the settings."""
    lines = [f"#### {review.label}  ({review.field}, annotation)"]
    if review.relabelled_from:
        lines.append(f"Relabelled by the package from **{review.relabelled_from}** (Undo restores it).")
    if review.tags:
        lines.append(f"Tags: {', '.join(review.tags)}")
    lines.append(f"- Inversion fidelity: Dice **{_percent(review.dice)}**, IoU **{_percent(review.iou)}**"
                 + (" (low fidelity: its embedding may not describe the region)" if review.low_fidelity else ""))
    if review.predicted_label is not None:
        lines.append(f"- Prediction: **{review.predicted_label}**, class mistakenness "
                     f"**{_percent(review.mistakenness)}**")
    if review.mask_mistakenness is not None:
        reason = f" ({review.mask_reason})" if review.mask_reason else ""
        lines.append(f"- Mask mistakenness **{_percent(review.mask_mistakenness)}**{reason}")
        lines += [f"  - {name}: {value:.3f}" for name, value in sorted(review.mask_components.items())]
    lines += [f"- To do: run '{step}'" for step in review.missing]
    settings = review.run.settings
    lines.append(f"\nRun `{review.run.embeddings_field}`: {settings.get('model_name')} / "
                 f"{settings.get('pretrained') or 'given weights'} at {settings.get('image_size')} px, "
                 f"{settings.get('iterations')} iterations, lr {settings.get('lr')}, alpha {settings.get('alpha')}, "
                 f"blocks {settings.get('blocks') or 'last'}, precision {settings.get('precision')}")
    return "\n".join(lines)


def _runs_overview(dataset):
    """One entry per run of the dataset: a paragraph of counts and settings, and what opens its views."""
    entries = []
    for run in list_region_runs(dataset):
        if not dataset.has_sample_field(run.regions_field):
            continue
        count = lambda name: _labelled(dataset, run, name)  # noqa: E731
        settings = run.settings
        text = (f"### {run.label_field} / {run.embeddings_field}\n"
                f"{count(run.embeddings_field)} regions embedded, {count(run.embeddings_field + '_predicted_label')} "
                f"relabelled, {count(run.embeddings_field + '_mask_mistakenness')} masks scored; outputs: "
                f"{', '.join(run.pred_fields) or 'none'}. {settings.get('model_name')} / "
                f"{settings.get('pretrained') or 'given weights'} at {settings.get('image_size')} px, "
                f"{settings.get('iterations')} iterations.")
        entries.append({"text": text, "label_field": run.label_field, "embeddings_field": run.embeddings_field})
    return entries


def register(plugin):
    for operator in (
        ComputeRegionEmbeddings,
        ZeroShotRelabel,
        ApplyRelabel,
        FindMislabeled,
        FindBadMasks,
        ShowMissingRegions,
        ShowRegionHeatmaps,
        SearchRegions,
        BuildRegionIndex,
        VisualizeRegions,
        DeleteRegionResults,
        RegionPanel,
    ):
        plugin.register(operator)
