"""fp32 means fp32: inversion and LeGrad calls pin full-precision matrix products whatever the caller set
(TF32, bf16 through oneDNN), restore the caller's settings afterwards, and never reuse a K folded for
another precision or another backbone."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fiftyone_maskinversion import MaskInverter, legrad_maps
from fiftyone_maskinversion.core.block_state import capture_image_state
from fiftyone_maskinversion.core.legrad import make_engine

from ..helpers import make_backbone

LEAVES = [("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"), ("mkldnn", "matmul"), ("mkldnn", "conv"),
          ("mkldnn", "rnn")]


def leaf_settings() -> dict:
    """The per-backend fp32 precision of every matmul / convolution backend (what PyTorch computes with)."""
    return {f"{b}.{op}": getattr(getattr(torch.backends, b), op).fp32_precision for b, op in LEAVES}


def legacy_matmul_precision():
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError as err:  # PyTorch refuses to answer after a mix of its legacy and new switches
        return f"refused: {type(err).__name__}"


@pytest.fixture
def callers_settings():
    """Leave the process's precision settings as the test found them."""
    saved = leaf_settings()
    yield
    torch.set_float32_matmul_precision("highest")  # the legacy switch too, so its getter answers again
    for (backend, op), value in zip(LEAVES, saved.values()):
        getattr(getattr(torch.backends, backend), op).fp32_precision = value


def set_tf32_flags():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


SETUPS = {
    "high": lambda: torch.set_float32_matmul_precision("high"),
    "medium": lambda: torch.set_float32_matmul_precision("medium"),
    "medium then allow_tf32 flags": lambda: (torch.set_float32_matmul_precision("medium"), set_tf32_flags()),
}

# A product whose fp32 result is known: on this AMD EPYC (AVX512-BF16) "medium" changed it by up to 8e-5
# (and moved the largest error of a 512 x 768 x 3072 product to float64 from 5.7e-5 to 1.2e-4), so
# comparing it bit for bit shows whether a product computed at that moment is a full fp32 one.
PROBE = (torch.randn(64, 768, generator=torch.Generator().manual_seed(0)),
         torch.randn(768, 256, generator=torch.Generator().manual_seed(1)))
EXACT_PROBE = PROBE[0] @ PROBE[1]  # computed at import, under PyTorch's default "highest"
PRODUCTS = {"linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "conv2d", "__matmul__"}


class ProductRecorder(TorchFunctionMode):
    """Records, at every matrix product or convolution called from Python, the backends' fp32 settings
    and whether the probe product computed right then is the exact one."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in PRODUCTS:
            self.seen.append((leaf_settings(), torch.equal(PROBE[0] @ PROBE[1], EXACT_PROBE)))
        return func(*args, **(kwargs or {}))


def calls(backbone, scene):
    image, masks = scene
    inverter = MaskInverter(backbone, iterations=2, precision="fp32")
    return {
        "invert": lambda: inverter.invert(image, masks),
        "invert_many": lambda: inverter.invert_many([(image, masks), (image, masks[:1])]),
        "legrad_maps": lambda: legrad_maps(backbone, image, torch.ones(2, backbone.embed_dim)),
    }


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("call", ["invert", "invert_many", "legrad_maps"])
def test_calls_compute_in_full_fp32_and_restore_the_callers_settings(setup, call, tiny, scene, callers_settings):
    run = calls(tiny, scene)[call]
    SETUPS[setup]()
    before = leaf_settings(), legacy_matmul_precision()
    assert set(before[0].values()) != {"ieee"}
    assert not torch.equal(PROBE[0] @ PROBE[1], EXACT_PROBE) or setup == "high"  # "high" is TF32: CUDA only
    with ProductRecorder() as recorder:
        run()
    assert len(recorder.seen) > 10  # the forward's and the optimisation's products
    assert all(settings == {leaf: "ieee" for leaf in settings} and exact for settings, exact in recorder.seen)
    assert (leaf_settings(), legacy_matmul_precision()) == before


def test_settings_are_restored_after_an_exception(tiny, scene, callers_settings):
    SETUPS["medium"]()
    before = leaf_settings(), legacy_matmul_precision()

    def fail(*_):
        raise RuntimeError("forward failed")

    handle = tiny.visual.register_forward_hook(fail)
    try:
        for call in calls(tiny, scene).values():
            with pytest.raises(RuntimeError, match="forward failed"):
                call()
            assert (leaf_settings(), legacy_matmul_precision()) == before
    finally:
        handle.remove()


def exact_fold(block) -> torch.Tensor:
    """K = W1 diag(gamma) Wo in float64, from the block's weights (reference for the folded matrix)."""
    fc, gamma = block.mlp.c_fc.weight.double(), block.ln_2.weight.double()
    return (fc * gamma) @ block.attn.out_proj.weight.double()


def test_a_k_folded_for_bf16_is_not_reused_in_fp32_and_each_backbone_keeps_its_own(tiny, scene):
    image, masks = scene
    other = make_backbone(seed=1)
    MaskInverter(tiny, iterations=1, precision="bf16-mixed").invert(image, masks)
    state = capture_image_state(tiny, tiny.pixels(image), [tiny.num_blocks - 1])
    folded = make_engine("fast", tiny, state, "fp32").blocks[0].folded
    expected = exact_fold(tiny.visual.transformer.resblocks[-1])
    assert folded.dtype == torch.float32
    # fp32 rounding of these 64-term sums: measured 2.7e-7 relative to the largest entry; bf16 gives 2.9e-3
    assert ((folded.double() - expected).abs().max() / expected.abs().max()).item() <= 1e-5
    keys = [key for key in tiny.cache if key[0] == "folded K"]
    assert {(key[3], key[4]) for key in keys} == {(torch.bfloat16, "bf16-mixed"), (torch.float32, "fp32")}
    assert all(key[2] == torch.device("cpu") for key in keys)
    assert not other.cache  # another backbone's cache is its own


def test_a_k_folded_under_the_callers_medium_precision_is_exact(tiny, scene, callers_settings):
    """The fold (cached for the model's lifetime) is pinned itself, so a caller's "medium" cannot leave a
    bf16-rounded K in the cache for later fp32 calls."""
    SETUPS["medium"]()
    state = capture_image_state(tiny, tiny.pixels(scene[0]), [tiny.num_blocks - 1])
    with ProductRecorder() as recorder:
        folded = make_engine("fast", tiny, state, "fp32").blocks[0].folded
    assert recorder.seen and all(exact for _, exact in recorder.seen)
    torch.set_float32_matmul_precision("highest")
    block = tiny.visual.transformer.resblocks[-1]
    fc, gamma, out = (t.detach() for t in (block.mlp.c_fc.weight, block.ln_2.weight, block.attn.out_proj.weight))
    assert torch.equal(folded, (fc * gamma) @ out)


def test_the_pin_is_reentrant(callers_settings):
    """A pinned function calling another pinned one (inversion -> engine) gets the caller's settings back
    only when the outermost call ends."""
    from fiftyone_maskinversion.core.precision import exact_fp32

    pin = exact_fp32()
    SETUPS["medium"]()
    before = leaf_settings()
    with pin:
        with pin:
            assert set(leaf_settings().values()) == {"ieee"}
        assert set(leaf_settings().values()) == {"ieee"}
    assert leaf_settings() == before
