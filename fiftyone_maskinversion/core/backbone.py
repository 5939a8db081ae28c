"""Loading a frozen open_clip ViT at the working resolution, and turning inputs into its tensors."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable, Dict, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.pretrained import download_pretrained
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from PIL import Image

from .. import defaults
from .inputs import ImageInput, load_rgb
from .transfer import to_device

DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
HUB_PROBE_TIMEOUT_S = 3.0
EXTRA_CONFIGS_ENV = "MASKINVERSION_MODEL_CONFIGS"
WEIGHTS_ENTRY_POINTS = "fiftyone_maskinversion.weights"
WeightsResolver = Callable[[], str]
_SHIPPED: Dict[Tuple[str, str], WeightsResolver] = {}


def register_model_configs() -> None:
    """Make the model config folders listed in $MASKINVERSION_MODEL_CONFIGS (os.pathsep-separated)
    known to open_clip by name, in this process and in the workers it starts."""
    for folder in os.environ.get(EXTRA_CONFIGS_ENV, "").split(os.pathsep):
        if folder and os.path.isdir(folder):
            open_clip.add_model_config(folder)


def register_weights(model_name: str, tag: str, resolve: WeightsResolver, config_dir: Optional[str] = None) -> None:
    """Declare a pretrained tag whose weights ship with an installed package: ``resolve()`` returns the
    checkpoint file; ``config_dir`` holds the model's open_clip config if open_clip does not know it."""
    if config_dir:
        open_clip.add_model_config(config_dir)
    _SHIPPED[(model_name, tag)] = resolve


@functools.lru_cache(maxsize=1)
def register_installed_weights() -> None:
    """Run every installed package's weights entry point once (how shipped tags register themselves)."""
    register_model_configs()
    for entry in entry_points(group=WEIGHTS_ENTRY_POINTS):
        entry.load()()


def shipped_checkpoint(model_name: str, tag: str) -> Optional[str]:
    """The checkpoint file of a tag an installed package ships, else None."""
    register_installed_weights()
    resolve = _SHIPPED.get((model_name, tag))
    return resolve() if resolve else None


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable from here."""


@dataclass
class Backbone:
    """A frozen open_clip model plus what MaskInversion needs to know about its vision tower."""

    model: torch.nn.Module
    tokenizer: object
    model_name: str
    pretrained: Optional[str]
    image_size: int
    mean: tuple
    std: tuple
    device: torch.device
    quick_gelu: bool = False
    interpolation: str = "bicubic"
    _weights_id: Optional[str] = field(default=None, repr=False)
    # what the engines derive from this model's weights alone (e.g. folded matrices), by their own keys
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def activation(self) -> str:
        """The MLP activation the model was built with ("quick_gelu" or "gelu")."""
        return "quick_gelu" if self.quick_gelu else "gelu"

    @property
    def weights_id(self) -> str:
        """A digest of every parameter and buffer: two backbones with equal ids compute the same thing."""
        if self._weights_id is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            digest.update(self.activation.encode())
            self._weights_id = digest.hexdigest()[:16]
        return self._weights_id

    @property
    def visual(self) -> VisionTransformer:
        return self.model.visual

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def embed_dim(self) -> int:
        return int(self.visual.proj.shape[1])

    def pixels(self, image: ImageInput) -> torch.Tensor:
        """The 1x3xSxS normalised tensor of an image, squashed (no crop: masks must cover the whole image)
        with the weights' interpolation (bicubic for CLIP)."""
        rgb = load_rgb(image, min_side=self.patch_size)
        resample = _PIL_RESAMPLE.get(self.interpolation, Image.BICUBIC)
        resized = rgb.resize((self.image_size, self.image_size), resample=resample)
        array = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)
        tensor = array.permute(2, 0, 1).unsqueeze(0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return to_device((tensor - mean) / std, self.device)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings (len(texts) x D) in the joint space."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def encode_image(self, image: ImageInput) -> torch.Tensor:
        """The model's own (unnormalised) image embedding at the working resolution (1 x D)."""
        return self.model.encode_image(self.pixels(image)).float()


def load_backbone(
    model_name: str = defaults.MODEL_NAME,
    pretrained: Optional[str] = defaults.PRETRAINED,
    image_size: int = defaults.IMAGE_SIZE,
    device: Union[str, torch.device, None] = None,
    quick_gelu: Optional[bool] = None,
) -> Backbone:
    """Create a frozen open_clip model whose positional embeddings are interpolated to image_size.

    ``pretrained`` is an open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``...), a path to a local
    checkpoint (a state_dict as open_clip saves it), or None for random weights. A tag is built the way
    its weights were trained: QuickGELU where open_clip's config of the tag says so (all OpenAI tags),
    and the tag's mean, std and interpolation. ``quick_gelu`` forces the activation either way (for a
    checkpoint of QuickGELU weights, or use a ``-quickgelu`` model name).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    register_installed_weights()
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
    checkpoint, tag_cfg = _resolve_weights(model_name, pretrained)
    if quick_gelu is None:
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    model = open_clip.create_model(
        model_name, pretrained=checkpoint, force_image_size=image_size, device=device, force_quick_gelu=quick_gelu
    )
    model.eval().requires_grad_(False)
    _check_vision_tower(model, model_name, image_size)
    preprocess = {**open_clip.get_model_preprocess_cfg(model), **{k: v for k, v in tag_cfg.items() if v}}
    return Backbone(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        model_name=model_name,
        pretrained=pretrained,
        image_size=image_size,
        mean=tuple(preprocess.get("mean") or DEFAULT_MEAN),
        std=tuple(preprocess.get("std") or DEFAULT_STD),
        device=device,
        quick_gelu=_uses_quick_gelu(model),
        interpolation=preprocess.get("interpolation") or "bicubic",
    )


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    """Whether the image tower's MLPs use QuickGELU (what the model was actually built with)."""
    block = model.visual.transformer.resblocks[0]
    return isinstance(block.mlp[1], open_clip.transformer.QuickGELU)


def _resolve_weights(model_name: str, pretrained: Optional[str]) -> tuple:
    """(checkpoint file or None for random weights, the tag's config); fails fast when weights can't be had."""
    if not pretrained:
        return None, {}
    if os.path.isfile(os.path.expanduser(pretrained)):
        return os.path.expanduser(pretrained), {}
    shipped = shipped_checkpoint(model_name, pretrained)
    if shipped:
        return shipped, {}
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        if os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".pth", ".safetensors")):
            raise FileNotFoundError(f"checkpoint file {pretrained!r} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"{pretrained!r} is neither a pretrained tag of {model_name!r} nor a checkpoint file; "
            f"known tags: {tags}"
        )
    cached = _cached_hub_file(cfg)
    if cached:
        return cached, cfg
    if not _hub_reachable():
        raise WeightsUnavailableError(
            f"pretrained weights {model_name!r} / {pretrained!r} are not in the local cache and the "
            "model hub cannot be reached (offline?). Download them on a connected machine, or pass a "
            f"local checkpoint: load_backbone({model_name!r}, pretrained='/path/to/checkpoint.bin')"
        )
    return download_pretrained(cfg), cfg


def _cached_hub_file(cfg: dict) -> Optional[str]:
    """The already-downloaded weights file of a pretrained config, if any."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(hub)
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in candidates:
        path = try_to_load_from_cache(repo_id, name)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _hub_reachable() -> bool:
    """Whether the model hub answers a TCP connection within a few seconds (and offline mode is off)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _check_vision_tower(model: torch.nn.Module, model_name: str, image_size: int) -> None:
    """Refuse image towers whose blocks are not the standard pre-norm ViT blocks LeGrad explains."""
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"{model_name!r} has no open_clip ViT image tower (found {type(visual).__name__})")
    if visual.proj is None or visual.attn_pool is not None:
        raise ValueError(f"{model_name!r}: image towers without a plain projection are not supported")
    for i, block in enumerate(visual.transformer.resblocks):
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(
            block.attn, torch.nn.MultiheadAttention
        ):
            raise ValueError(f"{model_name!r}: block {i} is {type(block).__name__}, not a standard ViT block")
    patch = int(visual.conv1.kernel_size[0])
    if image_size % patch:
        raise ValueError(f"image_size {image_size} must be a multiple of the patch size {patch}")
