"""The options of ``scripts/inference.py`` for an Open-Sora 2.0 config (YAML keys and flags, both spellings).

The keys mirror upstream's ``configs/diffusion/inference/256px.py`` (``sampling_option``, ``model``, ``ae``,
``t5``, ``clip``, ``cond_type``, ``motion_score``, ``fps_save``, ...; for text-to-image-to-video also
``use_t2i2v``, ``img_flux``, ``img_flux_ae``, ``img_resolution``) and upstream's command-line aliases
(``--resolution``, ``--aspect_ratio``, ``--num_frames``, ``--num-steps``, ``--guidance``, ``--guidance-img``
set the ``sampling_option`` entries; ``--ckpt_path`` the model weights); ``--prompt`` / ``--ref``, or
``--dataset.data-path`` (alias ``--csv``) with ``text`` and optional ``ref``, ``name``, ``neg`` columns.
A config is a 2.0 config when it has a ``sampling_option`` section (:func:`is_v2_config`).
"""
from __future__ import annotations

import os

from ...config import Config, ConfigError, Option, Schema, closest_key_hint, load_yaml, numeric, optional, str2bool
from ...datasets import aspect_v2
from ...dtypes import DTYPE_CHOICES
from ...runtime import SEED_RANGE, runtime_options
from ..options import EXISTING_OUTPUT_OPTIONS
from ..sequence_parallel import SEQUENCE_PARALLEL_OPTIONS
from .prompts import motion_score_text

# upstream's SamplingOption fields (their defaults there), each with its type and range: a value from the
# YAML's sampling_option section or from a flag is converted and checked by the same Option
SAMPLING_OPTIONS = [
    Option("width", optional(int), None, "video width (without resolution/aspect_ratio)", min=16, max=8192),
    Option("height", optional(int), None, "video height (without resolution/aspect_ratio)", min=16, max=8192),
    Option("resolution", optional(str), None, "256px, 768px"),
    Option("aspect_ratio", optional(str), None, "width:height: 16:9, 9:16, 1:1, 2.39:1, ..."),
    Option("num_frames", int, 1, "4k+1 up to 129; 1: an image", min=1, max=aspect_v2.MAX_NUM_FRAMES),
    Option("num_steps", int, 50, "sampling steps", min=1, max=10000),
    Option("guidance", float, 4.0, "text guidance scale", min=0, max=1000),
    Option("text_osci", str2bool, False, "text guidance off on odd steps from step 10"),
    Option("guidance_img", optional(float), None, "image guidance scale", min=0, max=1000),
    Option("image_osci", str2bool, False, "image guidance off on odd steps from step 10"),
    Option("scale_temporal_osci", str2bool, False, "image guidance ramped along the latent frames (i2v)"),
    Option("seed", optional(int), None, "noise seed (null: the top-level seed)", **SEED_RANGE),
    Option("shift", str2bool, True, "shift the time schedule by the size"),
    Option("method", str, "i2v", "the video model's sampler (distill: the t2i first frame's)",
           choices=("i2v", "distill")),
    Option("temporal_reduction", int, 1, "the VAE's temporal compression", min=1, max=64),
    Option("is_causal_vae", str2bool, False, "the VAE is causal (4k+1 frames)"),
    Option("flow_shift", optional(float), None, "fixes the schedule's shift factor", above=0, max=1000),
]
SAMPLING = {opt.name: opt for opt in SAMPLING_OPTIONS}
SAMPLING_DEFAULTS = {opt.name: opt.default for opt in SAMPLING_OPTIONS}
# top-level flags that set a sampling_option entry (upstream's parse_alias), checked with the entry's range
SAMPLING_ALIASES = ("resolution", "aspect_ratio", "num_frames", "num_steps", "guidance", "guidance_img")


def _alias(name: str) -> Option:
    entry = SAMPLING[name]
    return Option(name, entry.type if entry.default is None else optional(entry.type), None,
                  f"sets sampling_option.{name} ({entry.help})", min=entry.min, max=entry.max, above=entry.above)


@numeric
def motion_score(value):
    """A motion score: a number (kept as int when written as one, so the prompt suffix keeps its spelling);
    'dynamic' and other text are refused with :func:`motion_score_text`'s message."""
    text = motion_score_text(value)
    try:
        return int(text)
    except ValueError:
        return float(text)


OPTIONS = [
    # prompts and references
    Option("prompt", str, None, "prompts (a JSON suffix may add reference_path)", nargs="+"),
    Option("dataset", is_dict=True, default=None,
           help="upstream's dataset section {type: text, data_path: prompts.csv}; a csv with a 'text' column and "
                "optional 'ref', 'name' and 'neg' columns (a .txt file: one prompt per line)"),
    Option("csv", optional(str), None, "the prompt file (sets dataset.data_path)", aliases=("prompt_path",)),
    Option("ref", str, None, "reference image/video per prompt (';' joins two for i2v_loop)", nargs="+",
           aliases=("reference_path",)),
    Option("cond_type", str, "t2v", "t2v, i2v_head, i2v_tail, i2v_loop, v2v_head, v2v_tail, v2v_head_easy, "
                                    "v2v_tail_easy"),
    Option("neg_prompt", optional(str), None, "negative prompt for every prompt (default: '' as upstream; a csv "
                                              "'neg' column overrides it per prompt)"),
    Option("motion_score", optional(motion_score), None, "motion score appended to prompts (upstream's configs: "
                                                         "4); 'dynamic' (an online service) is refused",
           min=0, max=1000),
    Option("fps_save", int, 24, "frames per second of the videos, also the prompts' 'N FPS.' suffix",
           min=1, max=1000),
    Option("start_index", int, 0, "first row of the prompt file (also the first output index)", min=0),
    Option("end_index", optional(int), None, "end (exclusive) of the row slice", min=1),
    # sampling
    Option("sampling_option", is_dict=True, default=None,
           help="upstream's sampling_option {resolution, aspect_ratio, num_frames, num_steps, guidance, ...}"),
    *(_alias(name) for name in SAMPLING_ALIASES),
    Option("seed", int, 42, "seed of the noise when sampling_option.seed is null (upstream: random then)",
           **SEED_RANGE),
    Option("batch_size", int, 1, "prompts per batch", min=1),
    Option("num_sample", int, 1, "samples per prompt (names get _k for k > 0, as upstream)", min=1),
    Option("dtype", str, "bf16", "model dtype", choices=DTYPE_CHOICES),
    Option("offload", str2bool, False, "run one stage at a time over all prompts and release each model after "
                                       "its stage (upstream's offload_model)", aliases=("offload_model",)),
    Option("patch_size", int, 2, "latent patch size of the diffusion model", min=1, max=16),
    # text-to-image-to-video
    Option("use_t2i2v", str2bool, False, "generate the first frame with Flux-dev, then image-to-video"),
    Option("img_flux", is_dict=True, default=None, help="the Flux-dev model section (t2i2v)"),
    Option("img_flux_ae", is_dict=True, default=None, help="the Flux image autoencoder section (t2i2v)"),
    Option("img_resolution", str, "768px", "resolution of the generated first frame (t2i2v)"),
    # output
    Option("save_dir", str, "samples", "output folder"),
    Option("save_prefix", str, "", "file-name prefix (may name a subfolder; must stay inside save_dir)"),
    Option("prompt_as_path", str2bool, False, "name files by prompt and skip finished ones"),
    *EXISTING_OUTPUT_OPTIONS,
    Option("save_latent", str2bool, False, "also write each sample's latent next to it (latents/)"),
    Option("no_vae_decode", str2bool, False, "write latents only, no VAE (three-stage pipeline, text-to-video)"),
    Option("text_embed_folder", optional(str), None, "read T5 + CLIP embeddings ({index:04d}.npz, negatives in "
                                                     "neg/) from here; the text encoders are not loaded"),
    Option("write_prompts", optional(str), None, "write the prompts with their suffixes (and the negatives to "
                                                 "FILE.neg.txt) and exit: stage 1 of the three-stage pipeline"),
    Option("verbose", int, 1, "0: quiet; 1: progress over prompts; 2: also over sampling steps", min=0, max=2),
    # models
    Option("model", is_dict=True, default=None, help="diffusion model {type: flux, from_pretrained: ..., ...}"),
    Option("ae", is_dict=True, default=None, help="video autoencoder {type: hunyuan_vae, ...}"),
    Option("t5", is_dict=True, default=None, help="T5 text embedder {type: text_embedder, max_length: 512, ...}"),
    Option("clip", is_dict=True, default=None, help="CLIP text embedder {type: text_embedder, max_length: 77, ...}"),
    Option("ckpt_path", optional(str), None, "diffusion model weights (overrides model.from_pretrained)"),
    Option("random_weights_dir", str, "models/random-init", "where random weights of null from_pretrained go"),
    *runtime_options(),
    *SEQUENCE_PARALLEL_OPTIONS,
]


def v2_schema() -> Schema:
    return Schema(OPTIONS, description="Open-Sora 2.0 sampling: text/image/video to video, text-to-image-to-video")


def config_path_of(argv) -> str | None:
    """The ``--config``/``-c`` value of a command line (or None), without parsing the rest."""
    argv = list(argv or [])
    for i, token in enumerate(argv):
        if token in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def is_v2_config(argv) -> bool:
    path = config_path_of(argv)
    return bool(path) and os.path.isfile(path) and "sampling_option" in load_yaml(path)


def sampling_options(cfg: Config) -> dict:
    """``sampling_option`` with upstream's defaults and the top-level aliases applied; unknown keys refused."""
    given = dict(cfg.sampling_option or {})
    for key in given:
        if key not in SAMPLING_DEFAULTS:
            raise ConfigError(f"unknown key {key!r} in sampling_option{closest_key_hint(key, SAMPLING_DEFAULTS)} "
                              f"(valid keys: {', '.join(SAMPLING_DEFAULTS)})")
    opts = {**SAMPLING_DEFAULTS, **{key: SAMPLING[key].convert(value, f"sampling_option.{key}")
                                    for key, value in given.items()}}
    for key in SAMPLING_ALIASES:
        if cfg.get(key) is not None:
            opts[key] = cfg[key]
    return opts


def parse_v2(argv=None) -> Config:
    cfg = v2_schema().parse(argv)
    cfg.sampling = sampling_options(cfg)
    if cfg.ckpt_path:  # as in 1.x: the flag names the diffusion model's weights
        cfg.model = {**(cfg.model or {}), "from_pretrained": cfg.ckpt_path}
    return cfg
