"""The options of ``scripts/inference.py`` (YAML keys and flags; both dash and underscore spellings).

Names and meanings follow upstream 1.2's ``scripts/inference.py`` / ``config_utils.py``; additions:
``neg_prompt``, ``text_embed_folder``, ``save_latent``, ``no_vae_decode``, ``random_weights_dir``,
runtime keys (``device_target``, ``mode``, ``jit_level``).
"""
from __future__ import annotations

from ..config import Option, Schema, numeric, optional, str2bool
from ..dtypes import DTYPE_CHOICES
from ..runtime import SEED_RANGE, runtime_options
from .sequence_parallel import SEQUENCE_PARALLEL_OPTIONS


@numeric
def frame_count(value) -> int:
    """A frame count, or a preset ("4s", "2x"): read when the options are parsed, so it is checked there."""
    from ..datasets.aspect import get_num_frames

    return get_num_frames(value)


# what happens to output files that already exist: the same two flags for the 1.x and the 2.0 pipelines
EXISTING_OUTPUT_OPTIONS = [
    Option("overwrite", str2bool, False, "replace output files that already exist (default: refuse to start, "
                                         "naming them; with prompt_as_path finished ones are skipped)"),
    Option("skip_existing", optional(str2bool), None, "keep output files that already exist and make only the missing "
                                            "ones (resume an interrupted run); default: true with prompt_as_path"),
]

OPTIONS = [
    # prompts
    Option("prompt", str, None, "prompts (a JSON suffix may add reference_path / mask_strategy)", nargs="+"),
    Option("prompt_path", optional(str), None, "txt (one prompt per line) or csv with a 'text' column"),
    Option("start_index", int, 0, "first prompt of the file (also the first output index)", min=0),
    Option("end_index", optional(int), None, "end (exclusive) of the prompt slice", min=1),
    Option("neg_prompt", optional(str), None, "negative prompt, used instead of the learned null caption"),
    Option("aes", optional(float), None, "aesthetic score appended to prompts (1.2: 6.5)", min=0, max=10),
    Option("flow", optional(float), None, "motion score appended to prompts", min=0, max=1000),
    Option("camera_motion", optional(str), None, "camera motion appended to prompts (e.g. 'pan right')"),
    Option("clean_caption", str2bool, True, "upstream's T5 caption cleaning"),
    # size and time
    Option("num_frames", frame_count, 51, "frames: a count, or 2s/4s/8s/16s (51/102/204/408), 1x/2x/...", min=1),
    Option("resolution", optional(str), None, "preset: 144p, 240p, 360p, 480p, 720p, ..."),
    Option("aspect_ratio", optional(str), None, "H:W, e.g. 9:16 (240p -> 240x426)"),
    Option("image_size", optional(int), None, "explicit height width (overrides resolution/aspect_ratio; null: use them)",
           nargs="+", min=1),
    Option("fps", int, 24, "conditioning fps (images use 120)", min=1, max=1000),
    Option("frame_interval", int, 1, "save_fps defaults to fps // frame_interval", min=1),
    Option("save_fps", optional(int), None, "fps written to the mp4", min=1, max=1000),
    Option("multi_resolution", optional(str), None, "model size inputs: STDiT2 (1.1/1.2) or none (1.0)"),
    # sampling
    Option("num_sampling_steps", optional(int), None, "overrides scheduler.num_sampling_steps", min=1, max=10000),
    Option("cfg_scale", optional(float), None, "overrides scheduler.cfg_scale", min=0, max=1000),
    Option("seed", int, 42, "random seed", **SEED_RANGE),
    Option("batch_size", int, 1, "prompts per batch", min=1),
    Option("num_sample", int, 1, "samples per prompt (file names get -k)", min=1),
    Option("loop", int, 1, "number of clips generated one after the other (long videos)", min=1),
    Option("condition_frame_length", int, 5, "latent frames of the previous clip conditioning the next loop", min=1),
    Option("condition_frame_edit", float, 0.0, "edit ratio of those frames", min=0, max=1),
    Option("align", optional(int), None, "snap mask positions to multiples of this (1.2: 5)", min=1),
    Option("reference_path", str, None, "per prompt: ';'-separated image/video paths", nargs="+"),
    Option("mask_strategy", str, None, "per prompt: loop,ref,ref_start,target_start,length,edit_ratio;...",
           nargs="+"),
    Option("dtype", str, "fp32", "model/VAE dtype", choices=DTYPE_CHOICES),
    # output
    Option("save_dir", str, "./samples/samples/", "output folder"),
    Option("sample_name", optional(str), None, "file-name prefix (default 'sample')"),
    Option("prompt_as_path", str2bool, False, "name files by prompt and skip finished ones"),
    *EXISTING_OUTPUT_OPTIONS,
    Option("save_latent", str2bool, False, "also write each sample's latent to save_dir/latents/"),
    Option("no_vae_decode", str2bool, False, "do not load the VAE; write latents only (three-stage pipeline)"),
    Option("text_embed_folder", optional(str), None, "read T5 embeddings {index:04d}.npz from here; T5 not loaded"),
    Option("write_prompts", optional(str), None, "write the prompts with score suffixes (one per line) to this "
                                                 "file and exit: stage 1 of the three-stage pipeline encodes them"),
    Option("verbose", int, 1, "0: quiet; 1: progress over prompts; 2: also over sampling steps", min=0, max=2),
    # models
    Option("model", is_dict=True, default=None, help="diffusion model config {type: STDiT3-XL/2, ...}"),
    Option("vae", is_dict=True, default=None, help="VAE config {type: OpenSoraVAE_V1_2, ...}"),
    Option("text_encoder", is_dict=True, default=None, help="text encoder config {type: t5, ...}"),
    Option("scheduler", is_dict=True, default=None, help="scheduler config {type: rflow, ...}"),
    Option("ckpt_path", optional(str), None, "diffusion model weights (overrides model.from_pretrained)"),
    Option("blockwise", str2bool, False,
           "STDiT3 only: run the blocks through one compiled spatial and one temporal block graph "
           "(MindSpore's CPU graph mode holds ~2.8 GB per block pair of a compiled graph: the full-size 56-block graph "
           "needs far more than 24 GB, the blockwise one about 8 GB)"),
    Option("random_weights_dir", str, "models/random-init", "where random weights of null from_pretrained go"),
    Option("skip_size_check", str2bool, False, "do not refuse a size estimated not to fit in the available memory"),
    # runtime
    *runtime_options(),
    *SEQUENCE_PARALLEL_OPTIONS,
    Option("enable_flash_attn", optional(str2bool), None, "overrides model.enable_flash_attn", aliases=("flash_attn",)),
]


def inference_schema() -> Schema:
    return Schema(OPTIONS, description="Open-Sora sampling: text/image/video to video, loops, three-stage")
