"""The one home of every default the API, the CLI and the plugin share (model, method, field names)."""

from typing import Optional, Tuple

# model: the paper's ViT-B/16 at 448 px with OpenAI's weights
MODEL_NAME = "ViT-B-16"
PRETRAINED = "openai"
IMAGE_SIZE = 448

# method: as in the authors' README and examples
ITERATIONS = 10
LR = 0.5
ALPHA = 0.0  # the regulariser towards the image embedding; the paper uses 5 for referring expressions
REFER_ALPHA = 5.0
BLOCKS: Optional[Tuple[int, ...]] = None  # explained blocks; None = the last block only
ENGINE = "fast"
PRECISION = "auto"  # see core.precision: fp32 until bf16-mixed is measured within cosine 0.999 of it

# FiftyOne layer
EMBEDDINGS_FIELD = "mi_embedding"
BATCH_SIZE = 16  # samples per database write
HEATMAP_STORAGES = ("database", "files", "none")  # where a run keeps its maps: companion documents, PNGs, nowhere
HEATMAPS = "database"  # the storage a run uses unless told (one of HEATMAP_STORAGES)
HEATMAPS_DIR = "maskinversion-heatmaps"  # with "files" and no folder named: this folder under FiftyOne's dataset dir
# the fields a run's reviews write unless named: the role first, since the App's sidebar cuts a field name
# at about 27 characters and "<field>_<embeddings>_relabel" / "..._missing" looked the same there (runs
# that wrote the earlier names keep them: see relabel.default_pred_field, badmask.default_missing_field)
PRED_FIELD = "relabel_{label_field}_{embeddings_field}"
MISSING_FIELD = "missing_{label_field}_{embeddings_field}"
EARLIER_PRED_FIELD = "{label_field}_{embeddings_field}_relabel"  # the name before PRED_FIELD (its runs keep it)
PROMPT = "ensemble"  # CLIP's 80 ImageNet templates; or one template with {}
SINGLE_PROMPT = "a photo of a {}."
TOP_K = 5
RELABEL_THRESHOLD = 0.9
SEARCH_K = 25
INDEX_BACKEND = "sklearn"  # FiftyOne Brain similarity backend of the region index (in memory)
MIN_FIDELITY = 0.1  # inversion Dice below which a region's prediction is flagged, not ranked as a mistake
MIN_MISSING_SCORE = 0.1  # least score of a suggested missing region (see core.badmask)
MISSING_CONFIRMATION = 0.7  # least p(class | MaskInversion embedding of its box) to keep a suggestion

# evaluation
MISLABEL_NOISE = 0.2  # fraction of labels corrupted by the mislabel task
BADMASK_NOISE = 0.3  # fraction of masks corrupted by the badmask task
