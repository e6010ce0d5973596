"""Import Segment Anything's model classes without its automatic-mask-generator extras.

`segment_anything/__init__.py` imports `SamAutomaticMaskGenerator`, which imports torchvision for
non-maximum suppression. MaskSAM uses only `segment_anything.modeling` (and the builder), which
need nothing but torch, and torchvision is not always installable beside a given torch build
(CPU-only wheels, some Slicer installs). So when the normal import fails for want of torchvision,
the package is registered without running its `__init__` and the sub-modules are imported from
the installed files as usual. Nothing of SAM is copied or rewritten.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_PACKAGE = "segment_anything"


def _import_package() -> types.ModuleType:
    try:
        return importlib.import_module(_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("torchvision"):
            raise
    sys.modules.pop(_PACKAGE, None)
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError(
            "segment-anything is not installed (pip install segment-anything)", name=_PACKAGE
        )
    package = types.ModuleType(_PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = spec
    sys.modules[_PACKAGE] = package
    return package


_import_package()

from segment_anything.build_sam import sam_model_registry  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    TwoWayTransformer,
)
from segment_anything.modeling.image_encoder import (  # noqa: E402
    Attention as EncoderAttention,
    Block as EncoderBlock,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from segment_anything.modeling.transformer import (  # noqa: E402
    Attention as DecoderAttention,
    TwoWayAttentionBlock,
)

__all__ = [
    "DecoderAttention", "EncoderAttention", "EncoderBlock", "ImageEncoderViT", "MaskDecoder",
    "PromptEncoder", "TwoWayAttentionBlock", "TwoWayTransformer", "get_rel_pos", "sam_model_registry",
    "window_partition", "window_unpartition",
]
