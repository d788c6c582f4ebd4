"""The options of ``scripts/train.py`` (YAML keys = command-line flags), with the names users know.

Upstream's keys (``lr``, ``grad_clip``, ``ema_decay``, ``bucket_config``, ``mask_ratios``,
``ckpt_every``, ``outputs``...) are the primary names; the MindSpore README's/mindone's spellings
(``start_learning_rate``, ``max_grad_norm``, ``ckpt_save_steps``, ``output_path``, ``frame_stride``,
``use_recompute``...) are accepted as aliases.
"""
from __future__ import annotations

from ..config import ConfigError, Option, Schema, numeric, optional, str2bool
from ..dtypes import DTYPE_CHOICES
from ..runtime import SEED_RANGE, runtime_options


@numeric
def _int_or_list(value):
    """H W (or one number for a square), each at least 8 (one latent pixel of the VAE)."""
    if isinstance(value, (list, tuple)):
        values = [int(v) for v in value]
    else:
        text = str(value).strip().strip("[]()")
        values = [int(p) for p in text.replace(",", " ").split() if p]
    if not 1 <= len(values) <= 2 or min(values) < 8 or max(values) > 8192:
        raise ConfigError(f"expected H W (or one size), each in [8, 8192], got {value!r}")
    return values if len(values) > 1 else values[0]


@numeric
def _betas(value):
    if isinstance(value, str):
        value = [v for v in value.strip("[]() ").replace(",", " ").split() if v]
    values = [float(v) for v in value]
    if len(values) != 2 or not all(0.0 <= v < 1.0 for v in values):
        raise ConfigError(f"betas needs two numbers in [0, 1), got {value!r}")
    return values


OPTIONS = [
    # runtime
    *runtime_options(),
    Option("seed", int, 42, "seed of everything (data order, noise, timesteps, masks)", **SEED_RANGE),
    Option("use_parallel", str2bool, False, "data parallel under msrun (one process per device)"),
    Option("sp_size", int, 1, "sequence parallel (STDiT3, with use_parallel): each sample's tokens split across "
           "groups of this many ranks; data parallel across the groups", min=1, max=4096),
    Option("zero_stage", int, 0, "0: every rank keeps the full optimizer state; 1: ZeRO-1 sharded optimizer state",
           choices=(0, 1)),
    Option("zero_impl", str, "collective", "ZeRO-1 by the project's collectives (every backend) or MindSpore's "
           "built-in enable_parallel_optimizer (builtin: Ascend/GPU, untested on hardware)",
           choices=("collective", "builtin")),
    Option("max_device_memory", optional(str), None, "e.g. 59GB (Ascend/GPU)"),
    Option("dataset_sink_mode", str2bool, False, "not supported by this Python data pipeline: must stay false"),
    # model
    Option("model", dict, None, "model config: {type: STDiT3-XL/2, from_pretrained: ..., qk_norm: true, ...}",
           is_dict=True),
    Option("vae", dict, None, "VAE config, used to encode raw videos (not needed with video_embed_folder)",
           is_dict=True),
    Option("scheduler", dict, None, "training diffusion: {type: iddpm} (1.0/1.1) or {type: rflow, "
           "use_timestep_transform: true, sample_method: logit-normal} (1.2)", is_dict=True),
    Option("dtype", str, "fp32", "compute dtype of the diffusion model (weights and optimizer stay float32)",
           choices=DTYPE_CHOICES),
    Option("grad_checkpoint", str2bool, False, "recompute the blocks' activations in the backward",
           aliases=("use_recompute", "grad_checkpointing")),
    Option("num_recompute_blocks", optional(int), None, "recompute only the first N blocks", min=0),
    Option("ckpt_path", optional(str), None, "initialise the model from this .ckpt (plain names) before training",
           aliases=("load",)),
    Option("pretrained_pixart", optional(str), None,
           "Open-Sora 1.0 stage 1: initialise the spatial part from a converted PixArt-XL-2-512x512 .ckpt",
           aliases=("pretrained_model_path",)),
    # data
    Option("csv_path", optional(str), None, "csv with path/video and text/caption columns", aliases=("data_path",)),
    Option("video_folder", optional(str), None, "root of the video paths of the csv"),
    Option("text_embed_folder", optional(str), None, "T5 cache of scripts/infer_t5.py"),
    Option("video_embed_folder", optional(str), None, "VAE latent cache of scripts/infer_vae.py"),
    Option("num_frames", int, 16, "frames per clip (fixed-size training)", min=1, max=4096),
    Option("frame_interval", int, 3, "take every k-th frame", aliases=("frame_stride",), min=1),
    Option("image_size", _int_or_list, 256, "H W (or one number for a square) for fixed-size training", min=8),
    Option("transform_name", str, "center", "center (square crop) or resize_crop", choices=("center", "resize_crop")),
    Option("bucket_config", dict, None, "multi-resolution buckets {resolution: {frames: [keep_prob, batch_size]}}",
           is_dict=True),
    Option("mask_ratios", dict, None, "conditioning masks {random: 0.05, image_head: 0.1, ...}", is_dict=True),
    Option("batch_size", int, 1, "per-rank batch size (fixed-size training; buckets set their own)", min=1),
    Option("num_workers", int, 2, "threads reading the data", aliases=("num_parallel_workers",), min=0, max=256),
    # optimisation
    Option("epochs", int, 1000, "epochs (when max_steps is not given)", min=1),
    Option("max_steps", optional(int), None, "stop after this many optimizer steps", aliases=("train_steps",), min=1),
    Option("lr", float, 1e-4, "peak learning rate", aliases=("start_learning_rate", "learning_rate"), above=0, max=1),
    Option("end_lr", float, 0.0, "final lr of cosine/linear decay", aliases=("end_learning_rate",), min=0, max=1),
    Option("lr_schedule", str, "constant", "constant, cosine or linear (after warm-up)",
           choices=("constant", "cosine", "linear")),
    Option("warmup_steps", int, 0, "linear warm-up steps", min=0),
    Option("weight_decay", float, 0.0, "AdamW weight decay", min=0, max=1),
    Option("betas", _betas, [0.9, 0.999], "AdamW betas", min=0, max=1),
    Option("adam_eps", float, 1e-8, "AdamW eps", aliases=("optim_eps",), above=0, max=1),
    Option("grad_clip", optional(float), 1.0, "clip the global gradient norm (none: off)", aliases=("max_grad_norm",), above=0),
    Option("ema_decay", float, 0.9999, "EMA decay", min=0, max=1),
    Option("use_ema", str2bool, True, "keep an EMA of the weights"),
    Option("loss_scaler_type", str, "none", "none, static or dynamic (use with fp16)",
           choices=("none", "static", "dynamic")),
    Option("init_loss_scale", float, 65536.0, "initial (or static) loss scale", above=0, max=2.0**32),
    Option("loss_scale_factor", float, 2.0, "dynamic loss scale factor", above=1, max=1024),
    Option("scale_window", int, 1000, "finite steps before the dynamic scale grows", min=1),
    # outputs
    Option("outputs", str, "outputs/train", "output folder (logs, checkpoints)", aliases=("output_path",)),
    Option("ckpt_every", int, 1000, "save a checkpoint every N steps", aliases=("ckpt_save_steps",), min=1),
    Option("ckpt_max_keep", int, 3, "keep the last K checkpoints", min=1),
    Option("save_dtype", str, "fp32", "dtype of the model and EMA weights in checkpoints (the float32 master "
           "weights by default; fp16/bf16 halve the files; the optimizer state stays float32)", choices=DTYPE_CHOICES),
    Option("resume", optional(str), None, "true/latest: the latest checkpoint in outputs; or a checkpoint path"),
    Option("log_every", int, 10, "log line every N steps", aliases=("log_interval",), min=1),
    Option("progress_bar", str2bool, True, "show a progress bar"),
]


def train_schema() -> Schema:
    return Schema(OPTIONS, description="Train STDiT / STDiT2 / STDiT3 (Open-Sora 1.0 / 1.1 / 1.2) with MindSpore")
