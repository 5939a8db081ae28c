"""Numeric precision of the fast engine: exact fp32, or bf16 operands (fp32 accumulation) in the
per-token MLP/projection GEMMs only, where the hardware multiplies bf16 natively.

The attention-gradient bilinear form, its ReLU (which decides signs), the maps and the loss stay fp32.
Even so, benchmarks/precision.py measured bf16-mixed embeddings at min cosine 0.984 (mean 0.9995) to
fp32 for a random ViT-B-16/448 and 0.83 (mean 0.98) for ViT-B-32/224 on COCO masks: AdamW's first
steps move every coordinate by about lr whatever its gradient's size, so the bf16 rounding flips the
sign of small gradient coordinates. On CUDA the products are accumulated and returned in fp32, and the
min cosine was still 0.82 (ViT-B-32/224, H200): the operands' rounding alone is enough. "auto"
therefore chooses bf16-mixed only once that table's min cosine reaches 0.999 (:data:`AUTO_USES_BF16`);
until then it means fp32, and bf16-mixed (about 1.5x faster for ViT-B-16/448 on a CPU with AVX512-BF16,
1.15x on an H200 at 100 masks) is there for who asks for it.
"""

from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("fp32", "bf16-mixed", "auto")
AUTO_USES_BF16 = False  # the measured min cosine (0.83) is below the 0.999 that "auto" requires


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively: CUDA with bf16 tensor cores, a CPU with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16-mixed" for a requested precision ("auto": bf16-mixed where native and validated)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return "bf16-mixed" if AUTO_USES_BF16 and native_bf16(device) else "fp32"
    return precision


# Every switch through which PyTorch may compute an fp32 matrix product or convolution in lower precision
# (TF32 on CUDA, bf16 through oneDNN on CPUs): set_float32_matmul_precision("high" / "medium"),
# torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 all write these (torch >= 2.9).
_FP32_BACKENDS = (
    ("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"),
)


class exact_fp32(contextlib.ContextDecorator):
    """Pins full-precision fp32 matrix products and convolutions for the duration of a call (as context
    manager or decorator) and then restores the caller's settings, also on exception: a caller that
    switched TF32 or bf16 on globally must not turn an "fp32" run into a reduced-precision one.
    Re-entrant (a decorated function may call another); the settings are process-wide, so a thread that
    changes them during a call changes them for the call."""

    def __init__(self):
        self._saved: list = []  # one list of (setting, caller's value) per entry not yet exited

    def __enter__(self) -> "exact_fp32":
        settings = [getattr(getattr(torch.backends, backend), op) for backend, op in _FP32_BACKENDS]
        self._saved.append([(setting, setting.fp32_precision) for setting in settings])
        for setting in settings:
            setting.fp32_precision = "ieee"
        return self

    def __exit__(self, *exc) -> bool:
        for setting, value in reversed(self._saved.pop()):
            setting.fp32_precision = value
        return False
