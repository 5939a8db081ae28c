"""The CLIP trained in this repository: the method's behaviour asserted on held-out synthetic scenes."""

import numpy as np
import open_clip
import pytest
import torch

from fiftyone_maskinversion import MaskInverter, legrad_maps, load_backbone
from fiftyone_maskinversion.evaluation.baselines import region_embeddings
from fiftyone_maskinversion.synthetic.weights import BLOCKS, COMPACT_FILE, expand_compact
from fiftyone_maskinversion.core.metrics import binary_iou
from fiftyone_maskinversion.synthetic import CLASSES, make_scene, scenes
from fiftyone_maskinversion.synthetic.scenes import CONTEXT_CLASSES, make_context_scene
from fiftyone_maskinversion.synthetic.training import TRAIN_SEED, _batch, train
from fiftyone_maskinversion.core.zeroshot import class_embeddings, class_probabilities

HELD_OUT_SEED = 4242  # never used for training (TRAIN_SEED differs)
HELD_OUT_SCENES = 30


@pytest.fixture(scope="module")
def synth():
    return load_backbone("mi-synth-vit", pretrained="synthetic", image_size=64, device="cpu")


@pytest.fixture(scope="module")
def held_out():
    assert HELD_OUT_SEED != TRAIN_SEED
    return list(scenes(HELD_OUT_SEED, HELD_OUT_SCENES))


def accuracy(backbone, data, method, classes=CLASSES, **kwargs):
    text = class_embeddings(backbone, list(classes), ["a photo of a {}."])
    hits = []
    for scene in data:
        emb = region_embeddings(backbone, scene.image, scene.masks, method=method, **kwargs)
        probs = class_probabilities(backbone, emb, text)
        hits += [classes[i] == name for i, name in zip(probs.argmax(axis=1), scene.names)]
    return float(np.mean(hits))


def test_the_model_names_single_objects(synth):
    """The zero-shot classifier itself works: in one-object scenes the image embedding is the region's."""
    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    single = [make_scene(rng, min_objects=1, max_objects=1) for _ in range(40)]
    assert accuracy(synth, single, "clip") >= 0.9


def test_maskinversion_classifies_regions_far_better_than_the_global_embedding(synth, held_out):
    ours = accuracy(synth, held_out, "maskinversion", blocks=BLOCKS)
    clip = accuracy(synth, held_out, "clip")
    print(f"held-out region classification Acc@1: maskinversion {ours:.3f}, clip {clip:.3f}")
    # one of 2-4 objects per scene: the global embedding can name about a third of them at best.
    # (The last block alone no longer helps with the weights retrained on both worlds: 0.333 vs clip 0.323
    # measured, where the objects-only weights gave 0.430; the synthetic runs explain blocks 0-3.)
    assert ours >= clip + 0.35


def test_where_context_names_a_region_maskinversion_beats_the_crops(synth):
    """Context world, held-out scenes: the same square is "a moon" in the sky and "a ball" on the
    ground, so a crop (which shows the square alone) cannot name it; the localized embedding can."""
    held_out = list(scenes(HELD_OUT_SEED, HELD_OUT_SCENES, world="context"))
    ours = accuracy(synth, held_out, "maskinversion", classes=CONTEXT_CLASSES, blocks=BLOCKS)
    crop = accuracy(synth, held_out, "crop", classes=CONTEXT_CLASSES)
    masked = accuracy(synth, held_out, "masked_crop", classes=CONTEXT_CLASSES)
    print(f"context classes, held-out Acc@1: maskinversion {ours:.3f}, crop {crop:.3f}, masked_crop {masked:.3f}")
    assert ours >= crop + 0.20 and ours >= masked + 0.20


def test_final_maps_fit_the_masks_much_better_than_the_initial_maps(synth, held_out):
    initial, final = [], []
    for scene in held_out[:15]:
        result = MaskInverter(synth, blocks=BLOCKS).invert(scene.image, scene.masks)
        targets = torch.from_numpy(scene.masks).float()  # scenes are 64 px: the working size
        start = legrad_maps(synth, scene.image, torch.from_numpy(result.image_embedding)[None], blocks=BLOCKS)
        initial += binary_iou(torch.from_numpy(np.repeat(start, len(targets), 0)), targets).tolist()
        final += result.iou.tolist()
    print(f"mean IoU of LeGrad map and mask: initial {np.mean(initial):.3f}, final {np.mean(final):.3f}")
    assert np.mean(final) >= np.mean(initial) + 0.15


def test_shipped_weights_are_small_and_expand_to_the_model(synth):
    compact = COMPACT_FILE
    assert compact.stat().st_size < 5_000_000
    state = expand_compact(compact, "mi-synth-vit")
    for name, value in synth.model.state_dict().items():
        if name != "visual.positional_embedding" or value.shape == state[name].shape:
            torch.testing.assert_close(value, state[name])


def test_training_is_reproducible():
    first, seen_first = train(steps=2, batch_size=4, log_every=100)
    second, seen_second = train(steps=2, batch_size=4, log_every=100)
    assert seen_first == seen_second
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_training_batch_takes_the_worlds_in_turn():
    tokenizer = open_clip.get_tokenizer("mi-synth-vit")
    _, texts = _batch(np.random.default_rng(5), 3, tokenizer, ("objects", "context"))
    rng = np.random.default_rng(5)
    captions = [make_scene(rng, min_objects=1).caption, make_context_scene(rng, min_objects=1).caption,
                make_scene(rng, min_objects=1).caption]
    assert torch.equal(texts, tokenizer(captions))


def test_training_from_the_shipped_weights_keeps_their_tokens():
    shipped = torch.load(COMPACT_FILE, map_location="cpu", weights_only=True)["compact_token_ids"].tolist()
    _, seen = train(steps=1, batch_size=2, log_every=100, worlds=("objects", "context"), init=COMPACT_FILE)
    assert set(shipped) <= set(seen)
    with pytest.raises(ValueError, match="worlds"):
        train(steps=1, batch_size=2, worlds=("moon",))
    with pytest.raises(FileNotFoundError):
        train(steps=1, batch_size=2, init=COMPACT_FILE.with_name("missing.pt"))


def test_training_leaves_the_thread_count_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(steps=1, batch_size=2, log_every=100)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# measured on this machine (AMD EPYC), with the boundary and overshoot components: seed 7 AUROC 0.948 (swap
# 0.991, shift 0.894, erode 0.948), seed 4242 0.945 (swap 0.971, shift 0.906, erode 0.947); held out: the
# weights were chosen on seed 2024. Bounds 0.01 below, for rounding differences between CPUs that can
# reorder near-ties
@pytest.mark.parametrize("seed, least, erode", [(7, 0.938, 0.938), (4242, 0.935, 0.937)])
def test_the_bad_mask_finder_separates_corrupted_masks_on_held_out_scenes(synth, tmp_path, seed, least, erode):
    """``maskinversion eval badmask --synthetic 60 --seed <held-out seed>``: the score ranks masks moved
    onto another object, shifted and eroded above correct ones, better than its text-map part alone and
    than the crop's class probability, and its localisation parts find the shifted and eroded masks."""
    from fiftyone_maskinversion.evaluation import run
    from fiftyone_maskinversion.synthetic import write_coco

    folder = write_coco(tmp_path / "scenes", seed=seed, count=60)
    results = run(synth, folder, tmp_path / "out", tasks=["badmask"], methods=["maskinversion", "crop"],
                  blocks=BLOCKS)["badmask"]
    ours = results["maskinversion"]
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in ours.items() if k.startswith(("auroc", "reason"))))
    assert ours["auroc"] >= least and ours["auroc_erode"] >= erode
    assert ours["auroc_swap"] >= 0.961 and ours["auroc_shift"] >= 0.884  # 0.971 / 0.894 at least
    assert results["mask:shifted"]["auroc_shift"] >= 0.95  # the search over moves alone (0.970 / 0.961 measured)
    assert results["mask:boundary"]["auroc_erode"] >= 0.91  # the ring profile alone (0.922 / 0.976 measured)
    assert ours["auroc"] >= results["legrad_dice"]["auroc"] + 0.1
    assert ours["auroc"] >= results["crop"]["auroc"] + 0.1
    assert ours["reason_right"] >= 0.75  # 0.760 / 0.787 of the corrupted masks get the reason of their kind
    assert 0.2 <= ours["corrupted"] / ours["instances"] <= 0.4  # the seeded 30 %
