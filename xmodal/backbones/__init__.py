"""Pretrained backbones: Flax ViT, Swin, CLIP vision, CLIP text and BERT read from
local Hugging Face folders, with outputs equal to ``transformers``' models (tested).

    module, variables = from_pretrained("checkpoints/vit-base-patch16-224-in21k")
    tokens = module.apply(variables, images)          # [B, 197, 768]

    module, variables = from_pretrained("checkpoints/bert-base-uncased")
    batch = load_tokenizer("checkpoints/bert-base-uncased").encode(texts, 50)
    tokens = module.apply(variables, batch.input_ids, batch.attention_mask)  # [B, 50, 768]

    # The text tower of a CLIPModel folder (its vision tower is the default).
    module, variables = from_pretrained("checkpoints/clip-vit-large-patch14", kind="clip_text")

Modules take ``dtype`` (compute; parameters stay float32), ``remat`` (per block) and
``add_pooling_layer``; ``deterministic=False`` at call time turns dropout on.
``write_random_checkpoint`` makes tiny random folders in the same layout;
``check_folder`` / ``open_backbone`` / ``merge_pretrained`` check a configured folder,
build its module and put its weights into a model's parameters. Every per-kind table
derives from the one registry of architectures (``REGISTRY``,
:mod:`xmodal.backbones.registry`, whose docstring says how to add a backbone).
"""

from xmodal.backbones.bert import Bert, BertConfig
from xmodal.backbones.clip import CLIPVision, CLIPVisionConfig
from xmodal.backbones.clip_text import CLIPText, CLIPTextConfig
from xmodal.backbones.folders import (
    KNOWN_CHECKPOINTS,
    Backbone,
    Backbones,
    MissingCheckpointError,
    check_folder,
    merge_pretrained,
    open_backbone,
)
from xmodal.backbones.hf_checkpoint import CheckpointError
from xmodal.backbones.pretrained import (
    from_config,
    from_pretrained,
    load_config,
    param_shapes,
    write_random_checkpoint,
)
from xmodal.backbones.registry import REGISTRY, Architecture, BackboneConfig
from xmodal.backbones.swin import Swin, SwinConfig
from xmodal.backbones.tokenizer import (
    TextTokenizer,
    TokenizedText,
    default_vocab,
    load_tokenizer,
)
from xmodal.backbones.vit import ViT, ViTConfig

__all__ = [
    "KNOWN_CHECKPOINTS",
    "REGISTRY",
    "Architecture",
    "Backbone",
    "BackboneConfig",
    "Backbones",
    "Bert",
    "BertConfig",
    "CLIPText",
    "CLIPTextConfig",
    "CLIPVision",
    "CLIPVisionConfig",
    "CheckpointError",
    "MissingCheckpointError",
    "Swin",
    "SwinConfig",
    "TextTokenizer",
    "TokenizedText",
    "ViT",
    "ViTConfig",
    "check_folder",
    "default_vocab",
    "from_config",
    "from_pretrained",
    "load_config",
    "load_tokenizer",
    "merge_pretrained",
    "open_backbone",
    "param_shapes",
    "write_random_checkpoint",
]
