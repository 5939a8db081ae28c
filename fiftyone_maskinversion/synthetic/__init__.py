"""Synthetic scenes with exact masks, the small CLIP trained on them here, and its shipped weights
(the offline stand-in for pretrained CLIP). Needs only the core; never imports FiftyOne."""

from .scenes import CLASSES, Scene, make_scene, scenes, write_coco

__all__ = ["CLASSES", "Scene", "make_scene", "scenes", "write_coco"]
