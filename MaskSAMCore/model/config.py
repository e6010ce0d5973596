"""Network configuration: presets and the ablation switches of the paper's table 4.

A `MaskSAMConfig` fully determines the architecture; it is stored in a model folder's
``model.json`` (``network``) so the predictor rebuilds exactly the trained network, including the
number of slices T that the depth embeddings and depth adapters are built for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

# Prompt generator variants (paper Fig. 5, table 4 rows B1-B4).
PROMPT_MODES = (
    "mask",          # B1: auxiliary masks; box prompts are the boxes of those masks
    "box",           # B2: learnable boxes only, no mask prompt
    "mask_box",      # B3: auxiliary mask prompts + learnable box prompts
    "mask_avg_box",  # B4+ (MaskSAM): mask prompts + mean of learnable and mask-derived boxes
)
# Adapter variants (table 4 rows B5, B8, B9).
ADAPTER_KINDS = (
    "vanilla",     # B5: FC-down, GELU, FC-up everywhere
    "depth_mlp",   # B8: DMLPAdapter everywhere
    "depth_conv",  # B9 (MaskSAM): DConvAdapter for image embeddings, DMLPAdapter for tokens
)
# Where the depth MLP sits inside a DMLPAdapter (table 4 rows B6, B7, B8).
DEPTH_MLP_POSITIONS = ("middle", "after_up", "before_down")


@dataclass
class SamBackboneConfig:
    """The Segment Anything backbone (frozen)."""

    sam_type: str = "vit_b"              # which official checkpoint fits: vit_b / vit_l / vit_h / none
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8


@dataclass
class MaskSAMConfig:
    """Everything that shapes the network. Shapes below use B batch, C channels, T slices,
    H x W in-plane pixels, N queries, K classes (background included)."""

    backbone: SamBackboneConfig = field(default_factory=SamBackboneConfig)
    in_channels: int = 1                 # C: image modalities
    num_classes: int = 16                # K: label values 0..K-1, background included
    # N: predicted masks per slice. §2.3 asks for N "larger than" the most masks a slice has;
    # §2.7's matching needs only N >= N_gt. Every class, background included, is at most one
    # target per slice, so N_gt <= K and N = K already suffices (validate allows it).
    num_queries: int = 24
    image_size: Union[int, Tuple[int, int]] = 512  # H = W, or (H, W), fed to SAM (multiples of the ViT patch)
    # T: adjacent slices per patch (baked into the depth layers). The paper gives none; the
    # official configurations use 4 (ACDC, 256 px), 26 (Synapse, 256 px) and 9 (AMOS, 512 px).
    # 8 is next to AMOS's 9 at the same 512 px, one slice cheaper per window; unmeasured against 9.
    num_slices: int = 8
    # The paper gives no adapter widths: 0.25 is Med-SA's bottleneck; the depth MLP is an
    # "invert-bottleneck" (wider than T), 4x as a transformer MLP. The prompt-generator channels
    # below were then picked so that vit_b trains about table 5's 14 M parameters (14.2 M); the
    # count therefore checks nothing else (e.g. how many adapters an encoder block has).
    adapter_ratio: float = 0.25          # adapter bottleneck width / feature width
    depth_mlp_ratio: float = 4.0         # inverted-bottleneck width of the depth MLP, times T
    prompt_generator_channels: Tuple[int, ...] = (192, 128, 64, 32, 16)  # 1/16 .. 1/1 resolution
    pooled_hidden_dim: int = 256         # hidden width of the box / classifier-token MLPs
    mask_head_channels: int = 16
    modality_hidden_channels: int = 32
    prompt_mode: str = "mask_avg_box"
    adapter: str = "depth_conv"
    depth_mlp_position: str = "middle"
    depth_pos_embed: bool = True
    # DConvAdapters per encoder block: 1 after attention, parallel to the MLP; 2 adds one behind
    # attention (the two readings of §2.4, see image_encoder.py).
    encoder_adapters: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = SamBackboneConfig(**self.backbone)
        self.backbone.encoder_global_attn_indexes = tuple(self.backbone.encoder_global_attn_indexes)
        self.prompt_generator_channels = tuple(self.prompt_generator_channels)
        if not isinstance(self.image_size, int):
            height, width = (int(v) for v in self.image_size)
            self.image_size = height if height == width else (height, width)
        self.validate()

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def image_hw(self) -> Tuple[int, int]:
        """(H, W) of the in-plane input."""
        if isinstance(self.image_size, int):
            return (self.image_size, self.image_size)
        return (int(self.image_size[0]), int(self.image_size[1]))

    @property
    def embedding_hw(self) -> Tuple[int, int]:
        """(h, w) of SAM's image embedding: (H, W) / patch."""
        height, width = self.image_hw
        return (height // self.backbone.patch_size, width // self.backbone.patch_size)

    @property
    def low_res_mask_hw(self) -> Tuple[int, int]:
        """Size of SAM's mask-prompt input and decoder output: 4 (h, w)."""
        h, w = self.embedding_hw
        return (4 * h, 4 * w)

    @property
    def feature_block_indexes(self) -> Tuple[int, ...]:
        """Encoder blocks whose output feeds the prompt generator (0-based, shallowest first).

        The paper (section 2.5) takes "each three attention blocks" of ViT-B's 12: blocks 2, 5, 8
        and 11. It says nothing of deeper backbones; taking every third block of ViT-H would give
        ten maps of which the prompt generator uses the deepest four (20 .. 29, not the last
        block). So the rule is the last block and three more, each a quarter of the depth apart:
        ViT-B 2, 5, 8, 11; ViT-L 5, 11, 17, 23; ViT-H 7, 15, 23, 31 - the same blocks as SAM's
        global-attention ones. Backbones under 8 blocks give their last four (`tiny`: all three).
        """
        depth = self.backbone.encoder_depth
        step = max(depth // 4, 1)
        return tuple(sorted(range(depth - 1, -1, -step)[:4]))

    def validate(self) -> None:
        b = self.backbone
        problems = []
        if self.prompt_mode not in PROMPT_MODES:
            problems.append(f"prompt_mode must be one of {PROMPT_MODES}, not {self.prompt_mode!r}")
        if self.adapter not in ADAPTER_KINDS:
            problems.append(f"adapter must be one of {ADAPTER_KINDS}, not {self.adapter!r}")
        if self.depth_mlp_position not in DEPTH_MLP_POSITIONS:
            problems.append(f"depth_mlp_position must be one of {DEPTH_MLP_POSITIONS}")
        if any(side % b.patch_size or side <= 0 for side in self.image_hw):
            problems.append(f"image_size {self.image_size} is not a multiple of the ViT patch {b.patch_size}")
        if self.num_classes < 2:
            problems.append("num_classes must be at least 2 (background and one structure)")
        if self.num_queries < self.num_classes:   # N >= N_gt (§2.7), N_gt <= K: see num_queries
            problems.append(f"num_queries ({self.num_queries}) must be >= num_classes ({self.num_classes})")
        if self.encoder_adapters not in (1, 2):
            problems.append(f"encoder_adapters must be 1 or 2, not {self.encoder_adapters!r}")
        if self.in_channels < 1 or self.num_slices < 1:
            problems.append("in_channels and num_slices must be positive")
        # Widths the layers split: attention heads, SAM's sine/cosine positional encoding (two
        # halves; the decoder's cross-attention at half width) and its mask downscaling (to a
        # quarter, then all). Otherwise the network builds, or its first forward fails with a
        # reshape error that looks like a corrupt checkpoint.
        if b.encoder_embed_dim % b.encoder_num_heads:
            problems.append(f"encoder_embed_dim ({b.encoder_embed_dim}) must be a multiple of encoder_num_heads "
                            f"({b.encoder_num_heads})")
        if b.prompt_embed_dim % (2 * b.decoder_num_heads):
            problems.append(f"prompt_embed_dim ({b.prompt_embed_dim}) must be a multiple of twice "
                            f"decoder_num_heads ({b.decoder_num_heads})")
        if b.mask_in_chans < 4:
            problems.append("mask_in_chans must be at least 4")
        levels = b.patch_size.bit_length()  # log2(patch) upsamplings + the 1/patch level
        if b.patch_size & (b.patch_size - 1) or len(self.prompt_generator_channels) != levels:
            problems.append(
                f"prompt_generator_channels needs {levels} levels (1/{b.patch_size} .. 1/1) "
                "and the ViT patch must be a power of two")
        if problems:
            raise ValueError("invalid MaskSAM configuration: " + "; ".join(problems))

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["backbone"]["encoder_global_attn_indexes"] = list(self.backbone.encoder_global_attn_indexes)
        data["prompt_generator_channels"] = list(self.prompt_generator_channels)
        if not isinstance(self.image_size, int):
            data["image_size"] = list(self.image_size)
        if self.encoder_adapters == 1:
            # Left out at its default, so that a model.json of the default network stays what
            # earlier MaskSAM versions wrote and can read; a missing field reads back as 1.
            del data["encoder_adapters"]
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "MaskSAMConfig":
        problems = network_problems(data)
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**data)


def network_problems(data: Any) -> List[str]:
    """What makes `data` (model.json's ``network``) unreadable as a `MaskSAMConfig`: one phrase per
    field of the wrong type, named as in model.json. A hand-edited 48.5 or "3" would otherwise
    reach torch's layer constructors (a traceback) or `validate`'s comparisons (a TypeError)."""
    if not isinstance(data, dict):
        return ["network must be a mapping"]
    problems = _fields_problems(data, MaskSAMConfig, "network", "network settings")
    backbone = data.get("backbone", {})
    if not isinstance(backbone, dict):
        problems.append("network.backbone must be a mapping")
    else:
        problems += _fields_problems(backbone, SamBackboneConfig, "network.backbone", "backbone settings")
    return problems


def _fields_problems(data: Dict[str, Any], cls: type, where: str, what: str) -> List[str]:
    """Unknown keys of `data` and values that do not fit their `cls` field's type."""
    kinds = typing.get_type_hints(cls)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    problems = [f"unknown {what} {sorted(unknown)}"] if unknown else []
    for name, value in data.items():
        fits, wanted = _WANTED_BY_NAME.get(name) or _WANTED.get(kinds.get(name), (None, ""))
        if fits is not None and not fits(value):
            problems.append(f"{where}.{name} must be {wanted}, not {_shown(value)}")
    return problems


def _is_whole(value: Any, least: int = 1) -> bool:
    # bool is an int to Python, but true is no layer count
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _are_whole(value: Any, least: int = 1) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_whole(v, least) for v in value)


def _is_positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def _shown(value: Any) -> str:
    """A value as model.json writes it (48.5, "3", NaN)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


# Per field type: the test a value must pass and how a message names what is wanted. Every whole
# number counts something (channels, blocks, heads, pixels), so must be positive; block indexes
# (from 0) are the exception. `validate` then checks how the fields fit together.
_WANTED: Dict[Any, Tuple[Callable[[Any], bool], str]] = {
    int: (_is_whole, "a positive whole number"),
    float: (_is_positive_number, "a positive number"),
    str: (lambda v: isinstance(v, str), "a string"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    Tuple[int, ...]: (_are_whole, "a list of positive whole numbers"),
    Union[int, Tuple[int, int]]: (lambda v: _is_whole(v) or (_are_whole(v) and len(v) == 2),
                                  "a positive whole number or a list of two"),
}
_WANTED_BY_NAME: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "encoder_global_attn_indexes": (lambda v: _are_whole(v, 0), "a list of block indexes (whole numbers from 0)"),
}


SAM_IMAGE_SIZE = 1024   # the input size SAM was trained at (64 x 64 tokens of 16 px)
_BACKBONES: Dict[str, SamBackboneConfig] = {
    "vit_b": SamBackboneConfig("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamBackboneConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamBackboneConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    # Same code with toy widths: for tests and CPU demos, never loaded from a checkpoint.
    "tiny": SamBackboneConfig(
        sam_type="none", encoder_embed_dim=48, encoder_depth=3, encoder_num_heads=2,
        encoder_global_attn_indexes=(2,), window_size=4, patch_size=8, prompt_embed_dim=32,
        mask_in_chans=8, decoder_depth=2, decoder_mlp_dim=64, decoder_num_heads=2,
    ),
}

PRESET_NAMES = ("tiny", "vit_b", "vit_l", "vit_h")


def preset(name: str, num_classes: int = 16, in_channels: int = 1,
           num_queries: Optional[int] = None, **overrides: Any) -> MaskSAMConfig:
    """The configuration of a named preset for a task with `num_classes` and `in_channels`.

    `num_queries` defaults to the preset's value, raised to num_classes + 4 when a task has
    more classes (§2.3 asks for more queries than a slice has masks; `num_queries` says why
    equality would do).
    """
    if name not in _BACKBONES:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESET_NAMES}")
    backbone = dataclasses.replace(_BACKBONES[name])
    if name == "tiny":
        base: Dict[str, Any] = dict(
            image_size=64, num_slices=4, num_queries=12, prompt_generator_channels=(32, 24, 16, 16),
            pooled_hidden_dim=64, mask_head_channels=8, modality_hidden_channels=8,
        )
    else:
        # The paper gives no input size; the official release up-samples patches to SAM's 1024.
        # 512 costs a quarter of the encoder's tokens (and a sixteenth of its global attention)
        # per slice, for T slices per patch, while keeping 32 x 32 tokens for the prompts.
        base = dict(image_size=512, num_slices=8, num_queries=24)
    queries = num_queries if num_queries is not None else max(base.pop("num_queries"), num_classes + 4)
    base.pop("num_queries", None)
    base.update(overrides)
    config = MaskSAMConfig(backbone=backbone, in_channels=in_channels, num_classes=num_classes,
                           num_queries=queries, **base)
    native = SAM_IMAGE_SIZE // config.backbone.patch_size
    if name != "tiny" and all(tokens % 16 == 0 and tokens < native for tokens in config.embedding_hw):
        # At SAM's own 1024 px (64 tokens) its 14-token windows are kept, padded to 70, exactly as
        # SAM was trained. At 512 px (32 tokens) they would pad to 42x42 = 1.7x the real tokens;
        # 16-token windows tile the grid exactly, and the window blocks' relative-position tables
        # are resized (27 -> 31) on load.
        config.backbone.window_size = 16
    return config
