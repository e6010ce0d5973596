"""MaskSAM: the whole network (paper Fig. 2).

    x (B, C, T, H, W)
      -> modality adapter -> (B, T, H, W, 3) -> B*T slices (B*T, 3, H, W)
      -> SAM image encoder with depth adapters -> neck (B*T, 256, h, w) + block features
      -> prompt generator -> N auxiliary masks, N learnable boxes, N auxiliary classifier tokens
      -> box prompts (mean of learnable and mask-derived boxes) + mask prompts
      -> SAM prompt encoder -> sparse + dense embeddings for M = B*N*T prompts
      -> SAM mask decoder with classifier tokens and depth adapters -> class embedding + mask
      -> class head (K+1 logits incl. "no object"), 3D mask head (full resolution)

Only the SAM parts are frozen (see `builder.freeze_sam`); shapes are documented on each module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from MaskSAMCore.errors import ShapeError
from MaskSAMCore.model.boxes import masks_to_boxes, scale_xyxy
from MaskSAMCore.model.config import MaskSAMConfig
from MaskSAMCore.model.depth_embedding import DepthPositionalEmbedding
from MaskSAMCore.model.image_encoder import AdaptedImageEncoder
from MaskSAMCore.model.mask_decoder import MaskSAMDecoder
from MaskSAMCore.model.mask_head import MaskHead3D
from MaskSAMCore.model.modality_adapter import ModalityAdapter
from MaskSAMCore.model.prompt_generator import Prompts, PromptGenerator
from MaskSAMCore.model.sam_fast_paths import embed_masks
from MaskSAMCore.model.sam_import import PromptEncoder


@dataclass
class _Encoded:
    """What `MaskSAM._encode` hands to `_decode` (batch-first, so it slices by patch)."""

    neck: torch.Tensor          # (B, T, 256, h, w)
    prompts: Prompts
    boxes: torch.Tensor         # (B, T, N, 4) box prompts
    image_pe: torch.Tensor      # (T, 256, h, w) decoder positional encoding
    size: tuple                 # (H, W)


@dataclass
class MaskSAMOutput:
    """Network outputs; B volumes, T slices, N queries, K classes (background included)."""

    class_logits: torch.Tensor                # (B, T, N, K+1), last column "no object"
    mask_logits: torch.Tensor                 # (B, N, T, H, W) final masks
    aux_mask_logits: Optional[torch.Tensor]   # (B, N, T, H, W) prompt-generator masks or None
    aux_boxes: Optional[torch.Tensor]         # (B, T, N, 4) learnable boxes (xyxy in [0,1]) or None
    prompt_boxes: torch.Tensor                # (B, T, N, 4) the boxes given to SAM (xyxy in [0,1])


class MaskSAM(nn.Module):
    def __init__(self, config: MaskSAMConfig) -> None:
        super().__init__()
        self.config = config
        b = config.backbone
        self.modality_adapter = ModalityAdapter(config.in_channels, config.modality_hidden_channels)
        self.image_encoder = AdaptedImageEncoder(config)
        self.prompt_generator = PromptGenerator(config)
        self.prompt_encoder = PromptEncoder(
            embed_dim=b.prompt_embed_dim,
            image_embedding_size=config.embedding_hw,
            input_image_size=config.image_hw,
            mask_in_chans=b.mask_in_chans,
        )
        self.mask_decoder = MaskSAMDecoder(config)
        self.decoder_depth_pos_embed = DepthPositionalEmbedding(
            config.num_slices, b.prompt_embed_dim, enabled=config.depth_pos_embed
        )
        # The paper says neither how the global classifier tokens start nor how a class comes
        # out of the decoder's classifier token. The tokens keep nn.Embedding's N(0, 1) init, as
        # SAM's own output tokens and DETR's queries; the head is one linear layer to K + 1
        # logits, as MaskFormer's classifier: the decoder's token is already the class embedding.
        self.global_class_tokens = nn.Embedding(config.num_queries, b.prompt_embed_dim)
        self.class_head = nn.Linear(b.prompt_embed_dim, config.num_classes + 1)
        self.mask_head = MaskHead3D(config.mask_head_channels, use_aux=config.prompt_mode != "box")
        # Inference setting (not a weight): how many patches `segment` decodes per decoder call.
        self.decoder_patches_per_call: Optional[int] = None

    # -- forward -------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        c = self.config
        expected = (c.in_channels, c.num_slices, *c.image_hw)
        if x.dim() != 5:
            raise ShapeError(
                f"MaskSAM expects a 5D input (B, C, T, H, W) = (B, {', '.join(map(str, expected))}), "
                f"got {x.dim()}D shape {tuple(x.shape)}"
            )
        if x.shape[1] != c.in_channels:
            raise ShapeError(
                f"this model takes {c.in_channels} image channel(s), the input has {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )
        if tuple(x.shape[1:]) != expected:
            raise ShapeError(
                f"this model takes patches (B, C, T, H, W) = (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> MaskSAMOutput:
        """All outputs for a batch of patches ``(B, C, T, H, W)``."""
        encoded = self._encode(x)
        return self._decode(encoded, 0, x.shape[0])

    def _encode(self, x: torch.Tensor) -> "_Encoded":
        """Everything before SAM's decoder, for the whole batch (the encoder likes big batches)."""
        self.check_input(x)
        batch, _, slices, height, width = x.shape
        image = self.modality_adapter(x)                                    # (B, T, H, W, 3)
        neck, features = self.image_encoder(image.reshape(batch * slices, height, width, 3).permute(0, 3, 1, 2))
        prompts = self.prompt_generator(neck, features, image)
        image_pe = self.decoder_depth_pos_embed(
            self.prompt_encoder.get_dense_pe().expand(slices, -1, -1, -1), channels_first=True)
        return _Encoded(neck=neck.view(batch, slices, *neck.shape[1:]), prompts=prompts,
                        boxes=self._box_prompts(prompts), image_pe=image_pe, size=(height, width))

    def _decode(self, encoded: "_Encoded", start: int, stop: int) -> MaskSAMOutput:
        """SAM's prompt encoder, decoder and the heads for patches ``start:stop`` of the batch.

        The decoder works on B*T*N rows of h*w tokens each (N queries share a slice), its
        largest activations; decoding a few patches at a time bounds memory at inference."""
        prompts = encoded.prompts
        aux = prompts.aux_mask_logits[start:stop] if prompts.aux_mask_logits is not None else None
        aux_low = prompts.aux_low_res[start:stop] if prompts.aux_low_res is not None else None
        learned = prompts.learned_boxes[start:stop] if prompts.learned_boxes is not None else None
        boxes = encoded.boxes[start:stop]
        neck = encoded.neck[start:stop].flatten(0, 1)                      # (b*T, 256, h, w)
        batch, slices, queries = boxes.shape[:3]
        height, width = encoded.size

        # The decoder's rows are ordered (volume, query, slice): see mask_decoder.SliceLayout.
        # SAM's prompt encoder: box corners in pixels -> sparse tokens, mask -> dense embedding.
        # Our far edge is exclusive (boxes.py) and SAM adds 0.5 to both corners, so a box reaches
        # 1 input pixel past the last mask pixel's centre, where SAM's own mask boxes stop at it.
        # Kept: that is far inside the box jitter SAM was trained with (SD 10% of the side, up to
        # 20 px), and the exclusive edge gives one-pixel masks a non-zero box for the GIoU loss.
        sparse = self.prompt_encoder._embed_boxes(scale_xyxy(boxes, width, height).transpose(1, 2).reshape(-1, 4))
        mask_prompts = self._mask_prompts(aux_low)
        dense = (self.prompt_encoder.no_mask_embed.weight[0] if mask_prompts is None
                 else embed_masks(self.prompt_encoder, mask_prompts))
        class_tokens = self.global_class_tokens.weight + prompts.class_tokens[start:stop]   # (b, T, N, C)
        class_tokens = class_tokens.transpose(1, 2).reshape(-1, neck.shape[1])
        class_embedding, low_res = self.mask_decoder(neck, encoded.image_pe, sparse, dense, class_tokens)
        class_logits = self.class_head(class_embedding).view(batch, queries, slices, -1).transpose(1, 2)
        low_res = low_res.view(batch, queries, slices, *low_res.shape[-2:])
        masks = self.mask_head(low_res, aux_low, (height, width))
        return MaskSAMOutput(class_logits=class_logits, mask_logits=masks, aux_mask_logits=aux,
                             aux_boxes=learned, prompt_boxes=boxes)

    def _box_prompts(self, prompts: Prompts) -> torch.Tensor:
        """The box given to SAM per (volume, slice, query): ``(B, T, N, 4)`` xyxy in [0, 1]."""
        mode = self.config.prompt_mode
        if mode in ("box", "mask_box"):
            return prompts.learned_boxes
        # Thresholding is not differentiable: mask-derived boxes carry no gradient. The paper does
        # not say where it binarises; logit 0 is probability 0.5, the BCE loss's own decision
        # boundary (Mask2Former's instance inference also binarises at logit 0).
        with torch.no_grad():
            mask_boxes, nonempty = masks_to_boxes(prompts.aux_mask_logits.transpose(1, 2) > 0)
        # The paper averages the mask's box with the learnable one. It does not say what happens
        # where a query's thresholded auxiliary mask is empty on a slice (most queries on most
        # slices): there is no mask box, so the learnable box is used alone; in "mask" mode
        # (no learnable boxes) the box covers the whole slice, SAM's "anywhere" prompt.
        if mode == "mask":
            whole = torch.zeros(4, device=mask_boxes.device)   # [0, 0, 1, 1], made on the device
            whole[2:] = 1.0
            return torch.where(nonempty.unsqueeze(-1), mask_boxes, whole)
        learned = prompts.learned_boxes
        averaged = 0.5 * (learned + mask_boxes.to(learned.dtype))
        return torch.where(nonempty.unsqueeze(-1), averaged, learned)

    def _mask_prompts(self, aux_low: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Auxiliary masks ``(B, T, N, 4h, 4w)`` as SAM's mask prompts ``(M, 1, 4h, 4w)`` in the
        decoder's (volume, query, slice) row order, or None (box mode).

        The paper calls its mask prompts "auxiliary binary masks". SAM's mask input is logits
        (its interactive loop feeds back its previous low-resolution logits, unthresholded), so
        the auxiliary logits, average-pooled to 4h x 4w, are given as they are; thresholding
        would also stop the mask-prompt path from training the prompt generator.
        """
        if aux_low is None or self.config.prompt_mode == "box":
            return None
        return aux_low.transpose(1, 2).reshape(-1, 1, *aux_low.shape[-2:])

    # -- outputs ---------------------------------------------------------------------------------
    @staticmethod
    def semantic(output: MaskSAMOutput) -> torch.Tensor:
        """MaskFormer's semantic inference: ``(B, K, T, H, W)`` class scores in [0, 1]-ish.

        score_k = sum_n softmax(class_n)[k] * sigmoid(mask_n), the "no object" column dropped.
        """
        probs = output.class_logits.float().softmax(dim=-1)[..., :-1]       # (B, T, N, K)
        masks = output.mask_logits.float().sigmoid()                         # (B, N, T, H, W)
        # In float32 also under autocast, which would round both sides to bf16 (errors of ~0.01
        # on scores near 1, enough to move labels at boundaries); the sum over N queries is
        # memory-bound, so this costs no time, and no bf16 copy of `masks` is made.
        with torch.autocast(device_type=masks.device.type, enabled=False):
            return torch.einsum("btnk,bnthw->bkthw", probs, masks)

    def segment(self, x: torch.Tensor, patches_per_decoder_call: Optional[int] = None) -> torch.Tensor:
        """Class scores ``(B, K, T, H, W)`` for a batch of patches ``(B, C, T, H, W)``.

        The encoder runs on the whole batch; the decoder and heads on `patches_per_decoder_call`
        patches at a time (default `decoder_patches_per_call`, None = all), so a predictor can
        batch many windows and flips without the decoder's activations growing with them.
        """
        encoded = self._encode(x)
        step = patches_per_decoder_call or self.decoder_patches_per_call or x.shape[0]
        return torch.cat([self.semantic(self._decode(encoded, start, min(start + step, x.shape[0])))
                          for start in range(0, x.shape[0], step)])

    # -- speed -----------------------------------------------------------------------------------
    def compile_blocks(self, mode: Optional[str] = None) -> None:
        """`torch.compile` the repeated blocks one by one (for CUDA inference).

        Compiling block by block instead of the whole network keeps the first compilation short
        (identical blocks share one compiled graph, and PyTorch caches it on disk for the next
        run) while fusing what eager mode runs as dozens of memory-bound kernels: the adapters'
        depthwise convolutions, layer norms, residual sums and the decoder's per-prompt tensors.
        """
        for index, block in enumerate(self.image_encoder.blocks):
            self.image_encoder.blocks[index] = torch.compile(block, mode=mode, dynamic=False)
        layers = self.mask_decoder.transformer.layers
        for index, block in enumerate(layers):
            layers[index] = torch.compile(block, mode=mode, dynamic=False)
        self.prompt_generator = torch.compile(self.prompt_generator, mode=mode, dynamic=False)
        self.mask_head = torch.compile(self.mask_head, mode=mode, dynamic=False)

    # -- weights ---------------------------------------------------------------------------------
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """Only the trainable weights (what a fine-tuned model adds to SAM)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, weights: Dict[str, torch.Tensor]) -> None:
        """Load weights saved by `trainable_state_dict`; every trainable weight must be present."""
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        missing = sorted(expected - set(weights))
        unexpected = sorted(set(weights) - expected)
        if missing or unexpected:
            raise KeyError(f"trainable weights do not match the network: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        self.load_state_dict(weights, strict=False)
