"""Bounds on every number co2s reads from a file that sizes an allocation or a loop: a config, a
checkpoint's inference contract, a model folder (``co2s_model.json``) and the ``config.json`` of a
pretrained weight folder. Such files come from anyone; a value out of bounds is refused in one
line before anything is allocated, instead of allocating gigabytes or looping for hours.

Each bound is one named constant, stated with its reason in docs/models.md ("Limits on what co2s
reads", checked against this module by a test). They are generous: every real weight family fits
(open_clip ViT-bigG/14: width 1664, depth 48, 16 heads; DINOv3 ViT-7B/16: width 4096, depth 40,
32 heads, MLP 8192; DINOv2 ViT-g/14: width 1536, depth 40), with room to spare.
"""

from __future__ import annotations

# -- what a model predicts and reads ----------------------------------------------------------
#: class rasters are uint8 with 255 as nodata (co2s.inference.scene): indices 0..253
MAX_CLASSES = 254
#: bands into a model: RGB, Sentinel-2's 13, a hyperspectral subset; each band has its own mean/std
MAX_IN_CHANNELS = 64
#: models in one checkpoint or folder: Co2S trains two students, the other methods one
MAX_MODELS = 2
#: size of ``co2s_model.json``: a real one is a few kB (the contract plus the training config)
MAX_MODEL_RECORD_BYTES = 16 * 1024 * 1024

#: pixels of an image read whole (a PNG/JPEG/BMP, or a raster listed as a tile): 2^29, e.g.
#: 23170 px square, 1.6 GB as 8-bit RGB and 6.4 GB as model input. Pillow's own bound (179 Mpx)
#: stops a 200 Mpx phone photo or a 14,000 px orthophoto export as an attack; a raster larger than
#: this is a scene, read in windows
MAX_WHOLE_IMAGE_PIXELS = 2**29

# -- sliding-window prediction (eval.window/stride/batch_size, the contract's tiling) ----------
#: smallest tiling window and training crop (px): below it a ViT sees a couple of patches
MIN_TILE = 16
#: largest tiling window and training crop (px): a tile is held in memory whole, so the window,
#: not the scene, bounds prediction memory (SPEC 4); 4096 is 16x the paper's 256
MAX_TILE = 4096
#: the stride is at least window / MAX_TILE_OVERLAP: each pixel is predicted by at most 64 tiles
#: (the default stride, 5/6 of the window, predicts it about 1.4 times)
MAX_TILE_OVERLAP = 8
#: windows per forward pass (eval.batch_size)
MAX_BATCH_SIZE = 1024
#: pixels per forward pass, batch_size x window^2: 64 windows of 1024 px, or 4 of 4096 px
MAX_BATCH_PIXELS = 2**26

# -- architectures (contract records, HF config.json fields, config arch overrides) ------------
#: transformer width (hidden_size, projection_dim): ViT-7B 4096, bigG 1664
MAX_WIDTH = 8192
#: transformer MLP width (intermediate_size): ViT-7B 8192, bigG 8192
MAX_MLP_WIDTH = 32768
#: DINOv2's MLP width as a multiple of its width (mlp_ratio): 4 in every release
MAX_MLP_RATIO = 8
#: blocks per transformer tower (num_hidden_layers), and residual blocks of a CNN backbone:
#: bigG 48, DINOv3 ViT-7B 40
MAX_DEPTH = 64
#: attention heads (num_attention_heads): ViT-7B 32, bigG 16
MAX_HEADS = 128
#: patch size in px: DINO ViT-S/8 .. CLIP ViT-B/32; attention cost grows as (window / patch)^4
MIN_PATCH = 8
MAX_PATCH = 32
#: pretraining image size (image_size), which sizes learned position embeddings: DINOv2 518, CLIP 336
MAX_IMAGE_SIZE = 1024
#: DINOv3 register tokens (num_register_tokens): 4 in every release
MAX_REGISTERS = 16
#: CLIP text tower vocabulary (vocab_size): CLIP 49408; multilingual tokenizers about 250000
MAX_VOCAB = 262144
#: CLIP text tower context (max_position_embeddings): CLIP 77
MAX_TEXT_POSITIONS = 1024
#: channels of any conv of the CNN backbone and of lite_unet's widest stage: ResNet-50 ends at 2048
MAX_CONV_CHANNELS = 4096
#: stages of the CNN backbone (3 in its named architectures)
MAX_CNN_STAGES = 8
#: decoder width (head_width; the paper's 128)
MAX_HEAD_WIDTH = 1024


def tiling_problem(window: int, stride: int, batch_size: int) -> str | None:
    """Why the tiling ``window``/``stride``/``batch_size`` is out of bounds, or None: the one rule
    for configs and inference contracts."""
    if not MIN_TILE <= window <= MAX_TILE:
        return f"window {window} must be from {MIN_TILE} to {MAX_TILE} px"
    least = -(-window // MAX_TILE_OVERLAP)  # ceil: at most MAX_TILE_OVERLAP^2 tiles over a pixel
    if not least <= stride <= window:
        return f"stride {stride} must be from {least} (window / {MAX_TILE_OVERLAP}) to the window {window}"
    if not 1 <= batch_size <= MAX_BATCH_SIZE or batch_size * window * window > MAX_BATCH_PIXELS:
        return (f"batch_size {batch_size} must be from 1 to {MAX_BATCH_SIZE}, and batch_size x window^2 "
                f"at most {MAX_BATCH_PIXELS} pixels")
    return None
