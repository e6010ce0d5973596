"""Fine-tuning MaskSAM (paper §2.2, §2.7, appendix A). ``masksam train`` enters at `run.run_train`.

Concepts, one module each:

- `targets`: label patch (B, T, H, W) -> per-slice sets of (class, binary mask, box).
- `slice_view`: per-slice access to the network's outputs without copying mask tensors.
- `matcher`: Hungarian matching of N queries to the targets of each slice (scipy).
- `point_sampling`: where mask losses are evaluated (importance-sampled points or every pixel).
- `weights`: matching-cost and loss weights, and why they were chosen.
- `losses`: CE with a down-weighted "no object" class, BCE + Dice on masks, L1 + GIoU on boxes.
- `schedule`: SGD (Nesterov, momentum 0.99) or AdamW, poly learning rate, gradient clipping.
- `settings`: what a run is started with (kept in checkpoint_latest for `--resume`).
- `trainer`: the epoch loop, AMP, EMA pseudo-Dice, checkpoints, log, exact resume.
- `validation`: whole-case sliding-window validation Dice and loss.
- `checkpoint_io`, `rng_state`: what checkpoints hold; every RNG as plain tensors.
- `training_log`: training_log.csv and progress.png.
- `splits`: nnU-Net-style 5-fold splits.json.
- `batches`: the per-epoch `PatchLoader` stream, seeded by (seed, epoch, rank).
- `mirroring`: which patch axes augmentation flips (never left-right when labels are lateral).
- `sam_source`: which SAM weights a run starts from (checked before anything is written).
- `distributed`: DDP under torchrun (NCCL on GPU, gloo on CPU), multi-node included.
"""
