"""The weights this package ships: a compact file format, and the tag that resolves to it, registered
with the core through the ``fiftyone_maskinversion.weights`` entry point (see :func:`register`).

Compact = fp16 tensors, and of a large token embedding only the rows of the tokens that training
used (the rest were never trained and are stored as zeros when expanded). The expanded full
state_dict is cached on disk, so open_clip loads it through its normal checkpoint path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import open_clip
import torch

from ..core.backbone import register_weights

TOKEN_KEY = "token_embedding.weight"
MODEL_NAME, TAG = "mi-synth-vit", "synthetic"
HERE = Path(__file__).resolve().parent
COMPACT_FILE = HERE / "checkpoints" / f"{MODEL_NAME}.pt"
CONFIG_DIR = HERE / "model_configs"
IMAGE_SIZE = 64
BLOCKS = (0, 1, 2, 3)  # every block of the 4-block model: LeGrad aggregates over layers, the last alone is weak


def register() -> None:
    """Entry point: make ``load_backbone("mi-synth-vit", pretrained="synthetic")`` work in any process."""
    register_weights(MODEL_NAME, TAG, lambda: expanded_checkpoint(COMPACT_FILE, MODEL_NAME, TAG), str(CONFIG_DIR))


def save_compact(model: torch.nn.Module, token_ids: list, path: Path) -> None:
    """Save fp16 weights with only the token-embedding rows of ``token_ids`` (the ones training used)."""
    state = {k: v.detach().half() for k, v in model.state_dict().items() if k != TOKEN_KEY}
    ids = torch.tensor(token_ids, dtype=torch.long)
    state["compact_token_ids"] = ids
    state["compact_token_rows"] = model.state_dict()[TOKEN_KEY][ids].half()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def expand_compact(path: Path, model_name: str) -> dict:
    """A full float32 open_clip state_dict from a compact file."""
    compact = torch.load(path, map_location="cpu", weights_only=True)
    ids, rows = compact.pop("compact_token_ids"), compact.pop("compact_token_rows")
    tokens = torch.zeros(open_clip.get_model_config(model_name)["text_cfg"]["vocab_size"], rows.shape[1])
    tokens[ids] = rows.float()
    state = {k: v.float() for k, v in compact.items()}
    state[TOKEN_KEY] = tokens
    return state


def expanded_checkpoint(compact: Path, model_name: str, tag: str) -> str:
    """The expanded checkpoint file of a compact file (created in the user's cache on first use)."""
    if not compact.is_file():
        raise FileNotFoundError(f"{model_name!r} / {tag!r}: {compact} is missing; train it with "
                                "python -m fiftyone_maskinversion.synthetic.training")
    digest = hashlib.sha256(compact.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fiftyone_maskinversion"
    target = cache / f"{model_name}-{tag}-{digest}.pt"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")
        torch.save(expand_compact(compact, model_name), partial)
        os.replace(partial, target)  # atomic: concurrent first uses never see half a file
    return str(target)
