"""FiftyOne plugin: thin operators over fiftyone_maskinversion.fo (they gather inputs, call it, report progress)."""

import os
import socket
import urllib.parse

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_maskinversion import defaults
from fiftyone_maskinversion.core.precision import PRECISIONS
from fiftyone_maskinversion.core.zeroshot import classes_from_text
from fiftyone_maskinversion.fo import (
    apply_relabel,
    compute_region_embeddings,
    delete_region_results,
    find_bad_masks,
    find_mislabeled,
    list_region_runs,
    score_masks,
    search_regions,
    undo_relabel,
    visualize_regions,
    zero_shot_relabel,
)
from fiftyone_maskinversion.fo.appearance import review_color_scheme
from fiftyone_maskinversion.fo.heatmaps import SELECTION_VIEW, region_heatmaps_view, source_dataset
from fiftyone_maskinversion.fo.preview import MAX_REGIONS, preview_data_uri
from fiftyone_maskinversion.fo.regions import SUPPORTED_TYPES


def _label_field_input(ctx, inputs, embedded_only=False):
    """A dropdown of the fields the operator applies to; False (with a message in the form) when none."""
    if embedded_only:
        fields = sorted({run.label_field for run in list_region_runs(ctx.dataset)}) if ctx.dataset else []
        missing = "No field has MaskInversion embeddings yet: run 'MaskInversion: compute region embeddings' first."
    else:
        fields = sorted(ctx.dataset.get_field_schema(embedded_doc_type=SUPPORTED_TYPES)) if ctx.dataset else []
        missing = "This dataset has no Detections, Polylines or Segmentation field."
    if not fields:
        inputs.view("no_field", types.Error(label=missing))
        return False
    choices = types.Dropdown()
    for name in fields:
        choices.add_choice(name, label=name)
    inputs.enum("label_field", choices.values(), default=fields[0], label="Label field", view=choices)
    return True


def _embeddings_field_input(ctx, inputs):
    names = sorted({run.embeddings_field for run in list_region_runs(ctx.dataset)}) if ctx.dataset else []
    default = defaults.EMBEDDINGS_FIELD if not names or defaults.EMBEDDINGS_FIELD in names else names[0]
    inputs.str("embeddings_field", default=default, label="Embeddings attribute",
               description=f"runs on this dataset: {', '.join(names) or 'none'}")


def _form(inputs, label):
    return types.Property(inputs, view=types.View(label=label))


def _progress(ctx, what):
    def report(done, total):
        ctx.set_progress(progress=done / max(total, 1), label=f"{what}: {done}/{total} samples")

    return report


def _show(ctx, view):
    """Open a review view in the App, with masks drawn so that the object shows through (the dataset's
    scheme, set to the review scheme if the user has none, applied to the open App as well)."""
    scheme = review_color_scheme(ctx.dataset)
    ctx.ops.set_view(view)
    ctx.trigger("set_color_scheme", params={"color_by": scheme.color_by, "opacity": scheme.opacity})


def _prompt_input(inputs):
    prompts = types.RadioGroup()
    prompts.add_choice(defaults.PROMPT, label="CLIP template ensemble")
    prompts.add_choice(defaults.SINGLE_PROMPT, label=defaults.SINGLE_PROMPT)
    inputs.enum("prompt", prompts.values(), default=defaults.PROMPT, label="Prompts", view=prompts)


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


class _Delegable(foo.Operator):
    """An operator that runs immediately or, if the user asks, queued for `fiftyone delegated launch`."""

    op_name, op_label, op_description = "", "", ""

    @property
    def config(self):
        return foo.OperatorConfig(
            name=self.op_name,
            label=self.op_label,
            description=self.op_description,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_delegation(self, ctx):
        return bool(ctx.params.get("delegate", False))


def _delegation_input(inputs):
    inputs.bool("delegate", default=False, label="Run in the background (delegated)?")


class ComputeRegionEmbeddings(_Delegable):
    op_name = "compute_region_embeddings"
    op_label = "MaskInversion: compute region embeddings"
    op_description = "Localized CLIP embeddings, LeGrad heatmaps and Dice/IoU for every region of a label field"

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _label_field_input(ctx, inputs):
            inputs.str("model_name", default=defaults.MODEL_NAME, label="open_clip model")
            inputs.str("pretrained", default=defaults.PRETRAINED, label="Pretrained tag or checkpoint path",
                       description="an open_clip tag (openai, laion2b_s34b_b88k, ...) or a local checkpoint file")
            inputs.int("image_size", default=defaults.IMAGE_SIZE, label="Image size (px)")
            inputs.int("iterations", default=defaults.ITERATIONS, label="Iterations")
            inputs.float("lr", default=defaults.LR, label="Learning rate")
            inputs.float("alpha", default=defaults.ALPHA, label="Regularisation alpha (5 for referring expressions)")
            inputs.str("blocks", default="", label="Explained blocks",
                       description="comma-separated block indices, e.g. -2,-1 (empty: the last block)")
            precisions = types.RadioGroup()
            for value in PRECISIONS:
                precisions.add_choice(value, label=value)
            inputs.enum("precision", precisions.values(), default=defaults.PRECISION, label="Precision",
                        description="fp32 is exact; bf16-mixed is faster and approximate (see the README)",
                        view=precisions)
            _embeddings_field_input(ctx, inputs)
            inputs.bool("overwrite", default=False, label="Recompute regions that already have an embedding?")
            inputs.bool("include_crowd", default=False, label="Embed crowd regions (iscrowd=1) too?")
            inputs.int("batch_size", default=defaults.BATCH_SIZE, label="Samples per database write")
            inputs.str("device", default="", label="Device", description="e.g. cuda:0 or cpu (empty: cuda if available)")
            inputs.int("num_shards", default=1, label="Shards (parallel delegated workers)")
            inputs.view_target(ctx)
            _delegation_input(inputs)
        return _form(inputs, "Compute region embeddings")

    def execute(self, ctx):
        params = ctx.params
        shards = int(params.get("num_shards", 1) or 1)
        if shards > 1 and "shard_index" not in params:
            return _queue_shards(ctx, self.uri, shards)
        summary = compute_region_embeddings(
            ctx.target_view(),
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
        )
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

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("worker", "regions_field", "heatmaps_dataset"):
            outputs.str(key, label=key.replace("_", " "))
        for key in ("computed", "recomputed_stale", "skipped_existing", "skipped_crowd", "failed", "samples",
                    "queued_shards", "seconds"):
            outputs.int(key, label=key.replace("_", " "))
        return types.Property(outputs)


def _queue_shards(ctx, uri, shards):
    """Queue one delegated operation per shard, for `fiftyone delegated launch` workers to share; each
    shard's view is the form's target (selection included), resolved here."""
    target = ctx.target_view().view()  # a view even when the target is the whole dataset
    for index in range(shards):
        params = dict(ctx.params, shard_index=index, delegate=True, view_target="CURRENT_VIEW")
        foo.execute_operator(uri, ctx={"dataset": ctx.dataset.name, "view": target, "params": params},
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
                       description="empty: <label field>_<embeddings attribute>_relabel")
            inputs.bool("overwrite", default=False, label="Overwrite this run's existing predictions field?")
            inputs.view_target(ctx)
            _delegation_input(inputs)
        return _form(inputs, "Zero-shot relabel")

    def execute(self, ctx):
        params = ctx.params
        summary = zero_shot_relabel(
            ctx.target_view(),
            params["label_field"],
            embeddings_field=params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
            classes=classes_from_text(params.get("classes")),
            prompt=params.get("prompt", defaults.PROMPT),
            pred_field=params.get("pred_field") or None,
            top_k=int(params.get("top_k", defaults.TOP_K)),
            overwrite=bool(params.get("overwrite", False)),
        )
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"pred_field": summary.pred_field, "regions": summary.regions, "changed": summary.changed}


class ApplyRelabel(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="apply_relabel", label="MaskInversion: apply or undo relabels", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _label_field_input(ctx, inputs, embedded_only=True):
            _embeddings_field_input(ctx, inputs)
            inputs.str("pred_field", default="", label="Predictions field (empty: the run's default)")
            inputs.float("threshold", default=defaults.RELABEL_THRESHOLD, label="Minimum confidence")
            inputs.bool("undo", default=False, label="Undo: restore the original labels instead")
            inputs.view_target(ctx)
        return _form(inputs, "Apply relabel")

    def execute(self, ctx):
        params = ctx.params
        view = ctx.target_view()
        if params.get("undo"):
            count = undo_relabel(view, params["label_field"],
                                 embeddings_field=params.get("embeddings_field", defaults.EMBEDDINGS_FIELD)).count
        else:
            count = apply_relabel(view, params["label_field"], params.get("pred_field") or None,
                                  float(params.get("threshold", defaults.RELABEL_THRESHOLD)),
                                  params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
                                  include_low_fidelity=bool(params.get("include_low_fidelity", False))).count
        ctx.ops.reload_dataset()
        return {"changed": count}


class FindMislabeled(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="find_mislabeled", label="MaskInversion: show likely mislabeled regions",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _label_field_input(ctx, inputs, embedded_only=True):
            _embeddings_field_input(ctx, inputs)
            inputs.str("pred_field", default="", label="Predictions field (empty: the run's default)")
        return _form(inputs, "Find mislabeled regions")

    def execute(self, ctx):
        params = ctx.params
        view = find_mislabeled(ctx.dataset, params["label_field"], params.get("pred_field") or None,
                               params.get("embeddings_field", defaults.EMBEDDINGS_FIELD))
        _show(ctx, view)
        return {"regions": len(view)}


class FindBadMasks(_Delegable):
    op_name = "find_bad_masks"
    op_label = "MaskInversion: find bad masks and missing regions"
    op_description = "Mask mistakenness of every embedded region (class-text LeGrad maps) and suggested missing regions"

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _vocabulary_inputs(ctx, inputs):
            inputs.bool("suggest_missing", default=True, label="Suggest missing regions?")
            inputs.float("min_missing_score", default=defaults.MIN_MISSING_SCORE, label="Least suggestion score")
            inputs.float("confirmation", default=defaults.MISSING_CONFIRMATION,
                         label="Least p(class | MaskInversion embedding of a suggested box)")
            inputs.bool("overwrite", default=False, label="Rescore regions that already have a mask score?")
            inputs.view_target(ctx)
            _delegation_input(inputs)
        return _form(inputs, "Find bad masks")

    def execute(self, ctx):
        params = ctx.params
        field = params.get("embeddings_field", defaults.EMBEDDINGS_FIELD)
        summary = score_masks(ctx.target_view(), params["label_field"], field,
                              classes=classes_from_text(params.get("classes")),
                              prompt=params.get("prompt", defaults.PROMPT),
                              suggest_missing=bool(params.get("suggest_missing", True)),
                              min_missing_score=float(params.get("min_missing_score", defaults.MIN_MISSING_SCORE)),
                              confirmation=float(params.get("confirmation", defaults.MISSING_CONFIRMATION)),
                              overwrite=bool(params.get("overwrite")), progress=_progress(ctx, "Mask review"))
        if not ctx.delegated:
            _show(ctx, find_bad_masks(ctx.target_view(), params["label_field"], field))
        return {"scored": summary.scored, "suggested": summary.suggested, "failed": len(summary.failed),
                "missing_field": summary.missing_field or ""}


class ShowRegionHeatmaps(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="show_region_heatmaps", label="MaskInversion: show heatmaps of the selection",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if ctx.dataset is not None and source_dataset(ctx.dataset) is not None:
            inputs.view("back", types.Notice(label="Back to the dataset these heatmaps explain"))
        elif not (ctx.selected_labels or ctx.selected):
            inputs.view("none", types.Warning(label="Select regions (or samples) in the App first"))
        return _form(inputs, "Region heatmaps")

    def execute(self, ctx):
        source = source_dataset(ctx.dataset)
        if source is not None:  # back from the heatmaps to the regions they explain
            ctx.ops.open_dataset(source.name)
            return {"dataset": source.name}
        label_ids = [label["label_id"] for label in ctx.selected_labels]
        view = region_heatmaps_view(ctx.dataset, label_ids=label_ids, sample_ids=[] if label_ids else ctx.selected,
                                    save=True)
        if not len(view):
            raise ValueError("no heatmap of the selection: select embedded regions (or samples with some)")
        name = view._dataset.name
        return {"dataset": name, "heatmaps": len(view), "preview": preview_data_uri(view),
                "open": f"/datasets/{urllib.parse.quote(name)}?view={SELECTION_VIEW}"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("preview", label=f"LeGrad heatmaps (the first {MAX_REGIONS})", view=types.ImageView())
        outputs.str("open", label="All of them, full size: the heatmaps dataset's saved view "
                    f"'{SELECTION_VIEW}'", view=types.LinkView())
        outputs.int("heatmaps", label="heatmaps")
        return types.Property(outputs)


class SearchRegions(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="search_regions", label="MaskInversion: search regions by text or region",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _label_field_input(ctx, inputs, embedded_only=True):
            _embeddings_field_input(ctx, inputs)
            selected = bool(ctx.selected_labels)
            inputs.str("text", default="", required=not selected,
                       label="Text query" + (" (empty: use the selected region)" if selected else ""))
            inputs.int("k", default=defaults.SEARCH_K, label="Number of regions")
        return _form(inputs, "Search regions")

    def execute(self, ctx):
        params = ctx.params
        text = (params.get("text") or "").strip()
        region_id = None
        if not text:
            if not ctx.selected_labels:
                raise ValueError("type a text query or select one region in the App")
            region_id = ctx.selected_labels[0]["label_id"]
        view = search_regions(
            ctx.dataset,
            params["label_field"],
            text=text or None,
            region_id=region_id,
            k=int(params.get("k", defaults.SEARCH_K)),
            embeddings_field=params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
        )
        _show(ctx, view)
        return {"regions": len(view)}


class VisualizeRegions(_Delegable):
    op_name = "visualize_regions"
    op_label = "MaskInversion: embeddings layout of the regions"
    op_description = "A 2-D layout of the region embeddings for the Embeddings panel (FiftyOne Brain)"

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _label_field_input(ctx, inputs, embedded_only=True):
            _embeddings_field_input(ctx, inputs)
            methods = types.RadioGroup()
            for value, label in (("", "default (UMAP if installed, else t-SNE)"), ("umap", "UMAP"),
                                 ("tsne", "t-SNE"), ("pca", "PCA")):
                methods.add_choice(value, label=label)
            inputs.enum("method", methods.values(), default="", label="Method", view=methods)
            inputs.bool("overwrite", default=False, label="Replace this run's existing layout?")
            inputs.view_target(ctx)
            _delegation_input(inputs)
        return _form(inputs, "Embeddings layout")

    def execute(self, ctx):
        params = ctx.params
        results = visualize_regions(ctx.target_view(), params["label_field"],
                                    params.get("embeddings_field", defaults.EMBEDDINGS_FIELD),
                                    method=params.get("method") or None, overwrite=bool(params.get("overwrite")))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {"brain_key": results.key, "regions": len(results.current_points)}


class DeleteRegionResults(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="delete_region_results", label="MaskInversion: delete results", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _label_field_input(ctx, inputs, embedded_only=True):
            _embeddings_field_input(ctx, inputs)
            inputs.view("warning", types.Warning(
                label="Deletes this run's embeddings, heatmaps, relabel predictions and index (other runs stay)"))
        return _form(inputs, "Delete MaskInversion results")

    def execute(self, ctx):
        deleted = delete_region_results(ctx.dataset, ctx.params["label_field"],
                                        ctx.params.get("embeddings_field", defaults.EMBEDDINGS_FIELD))
        ctx.ops.reload_dataset()
        return {"deleted_attributes": len(deleted["attributes"]), "deleted_heatmaps": deleted["heatmaps"],
                "deleted_pred_fields": len(deleted["pred_fields"])}


def register(plugin):
    for operator in (
        ComputeRegionEmbeddings,
        ZeroShotRelabel,
        ApplyRelabel,
        FindMislabeled,
        FindBadMasks,
        ShowRegionHeatmaps,
        SearchRegions,
        VisualizeRegions,
        DeleteRegionResults,
    ):
        plugin.register(operator)
