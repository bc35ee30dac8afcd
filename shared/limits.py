"""Every size limit of the suite: one place, named, documented in README "Safety and limits".

A limit is checked before the thing it bounds is allocated, from what a file or a flag *claims* (a header, a config,
a zip directory, an image header), so a hostile input costs a few bytes of reading, not gigabytes. The readers, the
config and the commands import these names; nothing else spells these numbers.
This module imports nothing: every other module may import it.
"""
from __future__ import annotations

# ------------------------------------------------------------------ configs
#: the largest value of an architectural width (embed_dim, attn_dim, mlp_dim, representation_size)
MAX_WIDTH = 65_536
#: the most transformer blocks (ViT-22B has 48)
MAX_DEPTH = 1_024
#: the most attention heads, input channels, and the largest patch side
MAX_HEADS = 1_024
MAX_CHANNELS = 1_024
MAX_PATCH = 1_024
#: the most register tokens (DINOv2 uses 4)
MAX_PREFIX_TOKENS = 1_024
#: the largest image side a config may name
MAX_IMAGE_SIDE = 16_384
#: the most classes a head may have
MAX_CLASSES = 1_000_000
#: the most parameters a config may describe: 2^32 (16 GiB as float32; ViT-H/14 has 0.63e9, ViT-G/14 1.8e9)
MAX_PARAMETERS = 2**32

#: seeds (`--seed`, `--split-seed`, a file's `init_seed` / `split_seed`) reach numpy.random.default_rng and the
#: frameworks' seeders: 0 .. 2**32 - 1
SEED_MAX = 2**32 - 1

# ------------------------------------------------------------------ work a command may ask for
#: the largest estimated working memory of one forward pass (all images of a batch, float64 reference included):
#: a bigger `--batch` or `--image-size` is refused before anything is allocated
MAX_FORWARD_BYTES = 8 * 2**30
#: the most input bytes a command reads from one .npy (as float32)
NPY_MAX_BYTES = 4 * 2**30
#: the most images one `predict`/`evaluate` data set (a folder, or a digits range) may hold
MAX_IMAGES = 1_000_000
#: the most pixels one image file may have, read from its header before it is decoded (a decompression bomb
#: of 12000x12000 is refused; an 8000x5000 photo is fine)
MAX_IMAGE_PIXELS = 40_000_000
#: the largest image file read
MAX_IMAGE_FILE_BYTES = 256 * 2**20

# ------------------------------------------------------------------ readers
#: the largest safetensors header (the safetensors library's own limit)
MAX_HEADER_BYTES = 100_000_000
#: the deepest JSON nesting any reader accepts (a header, config.json, an index, a .keras config)
MAX_JSON_DEPTH = 64
#: the largest JSON file read whole (config.json, index, a .keras config.json)
MAX_JSON_BYTES = 64 * 2**20
#: the most entries one archive (.pt, .keras) may list
MAX_ARCHIVE_MEMBERS = 100_000
#: an archive whose members claim more than this many times its own size uncompressed (and more than
#: ZIP_RATIO_FLOOR in all: small JSON compresses well) is a zip bomb
MAX_ZIP_RATIO = 50
ZIP_RATIO_FLOOR = 16 * 2**20
#: the most an archive may claim uncompressed, whatever its size (weights at MAX_PARAMETERS, plus room)
MAX_ARCHIVE_UNCOMPRESSED = 20 * 2**30
#: the largest .onnx file read or written: protobuf's own 2 GiB limit (bigger models keep external data)
MAX_ONNX_BYTES = 2**31 - 1
#: the most external data one .onnx may reference, in all (weights at MAX_PARAMETERS, plus room)
MAX_ONNX_EXTERNAL_BYTES = 20 * 2**30

#: a tensor file's records (a MindSpore checkpoint's Values, a Keras weights file's datasets): the most of them, the
#: longest name, the most dimensions of one tensor
MAX_TENSORS = 100_000
MAX_NAME_BYTES = 1_024
MAX_NDIM = 32

# ------------------------------------------------------------------ messages
#: an error lists at most this many problems, then "... and N more"
MAX_LISTED_PROBLEMS = 20

# ------------------------------------------------------------------ temp files
#: a `.NAME.*.partial` file older than this, or whose writer's PID is dead, is removed by the next write beside it
STALE_PARTIAL_SECONDS = 15 * 60
