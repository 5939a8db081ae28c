"""FiftyOne plugin: thin operators over fiftyone_maskinversion (they gather inputs, call it, report progress)."""

import os
import socket

import fiftyone.operators as foo
import fiftyone.operators.types as types

import fiftyone_maskinversion as fmi
from fiftyone_maskinversion.dataset.regions import REGION_TYPES, SUPPORTED_TYPES

REGION_FIELDS = tuple(REGION_TYPES)  # fields whose labels carry the embeddings (Segmentation -> derived Detections)
TARGETS = {"DATASET": "Entire dataset", "CURRENT_VIEW": "Current view", "SELECTED_SAMPLES": "Selected samples"}


def _label_fields(ctx, types_=SUPPORTED_TYPES):
    schema = ctx.dataset.get_field_schema(embedded_doc_type=types_) if ctx.dataset else {}
    return sorted(schema)


def _field_choice(ctx, inputs, name="label_field", label="Label field", types_=SUPPORTED_TYPES):
    fields = _label_fields(ctx, types_)
    choices = types.Dropdown()
    for field in fields:
        choices.add_choice(field, label=field)
    inputs.enum(name, choices.values(), default=fields[0] if fields else None, required=True, label=label, view=choices)


def _target_choice(ctx, inputs):
    choices = types.RadioGroup()
    for value, label in TARGETS.items():
        if value != "SELECTED_SAMPLES" or ctx.selected:
            choices.add_choice(value, label=label)
    default = "SELECTED_SAMPLES" if ctx.selected else "CURRENT_VIEW"
    inputs.enum("target", choices.values(), default=default, label="Target", view=choices)


def _target_view(ctx):
    target = ctx.params.get("target", "CURRENT_VIEW")
    if target == "DATASET":
        return ctx.dataset
    if target == "SELECTED_SAMPLES" and ctx.selected:
        return ctx.view.select(ctx.selected)
    return ctx.view


def _progress(ctx, what):
    def report(done, total):
        ctx.set_progress(progress=done / max(total, 1), label=f"{what}: {done}/{total} samples")

    return report


def _delegation_input(inputs):
    inputs.bool("delegate", default=False, label="Run in the background (delegated)?")


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


class ComputeRegionEmbeddings(_Delegable):
    op_name = "compute_region_embeddings"
    op_label = "MaskInversion: compute region embeddings"
    op_description = "Localized CLIP embeddings, LeGrad heatmaps and Dice/IoU for every region of a label field"

    def resolve_input(self, ctx):
        inputs = types.Object()
        _field_choice(ctx, inputs)
        inputs.str("model_name", default="ViT-B-16", label="open_clip model", required=True)
        inputs.str(
            "pretrained",
            default="openai",
            label="Pretrained tag or checkpoint path",
            description="an open_clip tag (openai, laion2b_s34b_b88k, ...) or a local checkpoint file",
            required=True,
        )
        inputs.int("image_size", default=448, label="Image size (px)")
        inputs.int("iterations", default=10, label="Iterations")
        inputs.float("lr", default=0.5, label="Learning rate")
        inputs.float("alpha", default=0.0, label="Regularisation alpha (5 for referring expressions)")
        inputs.str("embeddings_field", default="mi_embedding", label="Embeddings attribute")
        inputs.bool("overwrite", default=False, label="Recompute regions that already have an embedding?")
        inputs.int("num_shards", default=1, label="Shards (parallel delegated workers)")
        _target_choice(ctx, inputs)
        _delegation_input(inputs)
        return types.Property(inputs, view=types.View(label="Compute region embeddings"))

    def execute(self, ctx):
        params = ctx.params
        shards = int(params.get("num_shards", 1) or 1)
        if shards > 1 and "shard_index" not in params:
            return _queue_shards(ctx, self.uri, shards)
        summary = fmi.compute_region_embeddings(
            _target_view(ctx),
            params["label_field"],
            model_name=params.get("model_name", "ViT-B-16"),
            pretrained=params.get("pretrained", "openai"),
            image_size=int(params.get("image_size", 448)),
            iterations=int(params.get("iterations", 10)),
            lr=float(params.get("lr", 0.5)),
            alpha=float(params.get("alpha", 0.0)),
            embeddings_field=params.get("embeddings_field", "mi_embedding"),
            overwrite=bool(params.get("overwrite", False)),
            shard=(int(params.get("shard_index", 0)), shards) if shards > 1 else None,
            progress=_progress(ctx, "MaskInversion"),
        )
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        return {
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            "computed": summary.computed,
            "skipped_existing": summary.skipped_existing,
            "skipped_crowd": summary.skipped_crowd,
            "failed": len(summary.failed),
            "seconds": round(summary.seconds, 1),
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("worker", label="worker")
        for key in ("computed", "skipped_existing", "skipped_crowd", "failed", "queued_shards", "seconds"):
            outputs.int(key, label=key.replace("_", " "))
        return types.Property(outputs)


def _queue_shards(ctx, uri, shards):
    """Queue one delegated operation per shard, for `fiftyone delegated launch` workers to share."""
    for index in range(shards):
        params = dict(ctx.params, shard_index=index, delegate=True)
        foo.execute_operator(
            uri, ctx={"dataset": ctx.dataset.name, "view": ctx.view, "params": params}, request_delegation=True
        )
    return {"queued_shards": shards}


class ZeroShotRelabel(_Delegable):
    op_name = "zero_shot_relabel"
    op_label = "MaskInversion: zero-shot relabel regions"
    op_description = "Predicted class, confidence, top-k and mistakenness for every embedded region"

    def resolve_input(self, ctx):
        inputs = types.Object()
        _field_choice(ctx, inputs)
        inputs.str("embeddings_field", default="mi_embedding", label="Embeddings attribute")
        inputs.str("classes", default="", label="Classes (comma-separated; empty: the field's labels)")
        prompts = types.RadioGroup()
        prompts.add_choice("ensemble", label="CLIP template ensemble")
        prompts.add_choice("a photo of a {}.", label="a photo of a {}.")
        inputs.enum("prompt", prompts.values(), default="ensemble", label="Prompts", view=prompts)
        inputs.int("top_k", default=5, label="Top-k classes to keep")
        inputs.str("pred_field", default="", label="Predictions field (empty: <field>_mi_relabel)")
        inputs.bool("overwrite", default=False, label="Overwrite an existing predictions field?")
        _target_choice(ctx, inputs)
        _delegation_input(inputs)
        return types.Property(inputs, view=types.View(label="Zero-shot relabel"))

    def execute(self, ctx):
        params = ctx.params
        classes = [c.strip() for c in (params.get("classes") or "").split(",") if c.strip()]
        summary = fmi.zero_shot_relabel(
            _target_view(ctx),
            params["label_field"],
            embeddings_field=params.get("embeddings_field", "mi_embedding"),
            classes=classes or None,
            prompt=params.get("prompt", "ensemble"),
            pred_field=params.get("pred_field") or None,
            top_k=int(params.get("top_k", 5)),
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
        _field_choice(ctx, inputs, types_=REGION_FIELDS)
        inputs.str("pred_field", default="", label="Predictions field (empty: <field>_mi_relabel)")
        inputs.float("threshold", default=0.9, label="Minimum confidence")
        inputs.bool("undo", default=False, label="Undo: restore the original labels instead")
        _target_choice(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Apply relabel"))

    def execute(self, ctx):
        params = ctx.params
        view = _target_view(ctx)
        if params.get("undo"):
            count = fmi.undo_relabel(view, params["label_field"])
        else:
            count = fmi.apply_relabel(
                view, params["label_field"], params.get("pred_field") or None, float(params.get("threshold", 0.9))
            )
        ctx.ops.reload_dataset()
        return {"changed": count}


class FindMislabeled(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="find_mislabeled", label="MaskInversion: show likely mislabeled regions")

    def resolve_input(self, ctx):
        inputs = types.Object()
        _field_choice(ctx, inputs, types_=REGION_FIELDS)
        inputs.str("pred_field", default="", label="Predictions field (empty: <field>_mi_relabel)")
        return types.Property(inputs, view=types.View(label="Find mislabeled regions"))

    def execute(self, ctx):
        view = fmi.find_mislabeled(ctx.dataset, ctx.params["label_field"], ctx.params.get("pred_field") or None)
        ctx.ops.set_view(view)
        return {"regions": len(view)}


class SearchRegions(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="search_regions", label="MaskInversion: search regions by text or region")

    def resolve_input(self, ctx):
        inputs = types.Object()
        _field_choice(ctx, inputs, types_=REGION_FIELDS)
        inputs.str("embeddings_field", default="mi_embedding", label="Embeddings attribute")
        inputs.str("text", default="", label="Text query (empty: use the selected region)")
        inputs.int("k", default=25, label="Number of regions")
        return types.Property(inputs, view=types.View(label="Search regions"))

    def execute(self, ctx):
        params = ctx.params
        text = (params.get("text") or "").strip()
        region_id = None
        if not text:
            if not ctx.selected_labels:
                raise ValueError("type a text query or select one region in the App")
            region_id = ctx.selected_labels[0]["label_id"]
        view = fmi.search_regions(
            ctx.dataset,
            params["label_field"],
            text=text or None,
            region_id=region_id,
            k=int(params.get("k", 25)),
            embeddings_field=params.get("embeddings_field", "mi_embedding"),
        )
        ctx.ops.set_view(view)
        return {"regions": len(view)}


class DeleteRegionResults(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="delete_region_results", label="MaskInversion: delete results", dynamic=True
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _field_choice(ctx, inputs, types_=REGION_FIELDS)
        inputs.str("embeddings_field", default="mi_embedding", label="Embeddings attribute")
        inputs.view("warning", types.Warning(label="Deletes embeddings, heatmaps, relabel predictions and the index"))
        return types.Property(inputs, view=types.View(label="Delete MaskInversion results"))

    def execute(self, ctx):
        deleted = fmi.delete_region_results(
            ctx.dataset, ctx.params["label_field"], ctx.params.get("embeddings_field", "mi_embedding")
        )
        ctx.ops.reload_dataset()
        return {"deleted_attributes": len(deleted["attributes"]), "deleted_heatmaps": deleted["heatmaps"]}


def register(plugin):
    for operator in (
        ComputeRegionEmbeddings,
        ZeroShotRelabel,
        ApplyRelabel,
        FindMislabeled,
        SearchRegions,
        DeleteRegionResults,
    ):
        plugin.register(operator)
