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

from ...config import Config, ConfigError, Option, Schema, closest_key_hint, load_yaml, optional, str2bool
from ...dtypes import DTYPE_CHOICES
from ...runtime import runtime_options

# upstream's SamplingOption fields (and their defaults there)
SAMPLING_DEFAULTS = dict(width=None, height=None, resolution=None, aspect_ratio=None, num_frames=1, num_steps=50,
                         guidance=4.0, text_osci=False, guidance_img=None, image_osci=False,
                         scale_temporal_osci=False, seed=None, shift=True, method="i2v", temporal_reduction=1,
                         is_causal_vae=False, flow_shift=None)
# top-level flags that set a sampling_option entry (upstream's parse_alias)
SAMPLING_ALIASES = ("resolution", "aspect_ratio", "num_frames", "num_steps", "guidance", "guidance_img")


def _text(value):
    return None if value is None else str(value)


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
    Option("motion_score", optional(_text), None, "motion score appended to prompts (upstream's configs: 4); "
                                                  "'dynamic' (an online service) is refused"),
    Option("fps_save", int, 24, "frames per second of the videos, also the prompts' 'N FPS.' suffix"),
    Option("start_index", int, 0, "first row of the prompt file (also the first output index)"),
    Option("end_index", optional(int), None, "end (exclusive) of the row slice"),
    # sampling
    Option("sampling_option", is_dict=True, default=None,
           help="upstream's sampling_option {resolution, aspect_ratio, num_frames, num_steps, guidance, ...}"),
    Option("resolution", optional(str), None, "sets sampling_option.resolution (256px, 768px)"),
    Option("aspect_ratio", optional(str), None,
           "sets sampling_option.aspect_ratio (width:height: 16:9, 9:16, 1:1, 2.39:1, ...)"),
    Option("num_frames", optional(int), None, "sets sampling_option.num_frames (4k+1 up to 129; 1: an image)"),
    Option("num_steps", optional(int), None, "sets sampling_option.num_steps"),
    Option("guidance", optional(float), None, "sets sampling_option.guidance (text guidance)"),
    Option("guidance_img", optional(float), None, "sets sampling_option.guidance_img (image guidance)"),
    Option("seed", int, 42, "seed of the noise when sampling_option.seed is null (upstream: random then)"),
    Option("batch_size", int, 1, "prompts per batch"),
    Option("num_sample", int, 1, "samples per prompt (names get _k for k > 0, as upstream)"),
    Option("dtype", str, "bf16", "model dtype", choices=DTYPE_CHOICES),
    Option("offload", str2bool, False, "run one stage at a time over all prompts and release each model after "
                                       "its stage (upstream's offload_model)", aliases=("offload_model",)),
    Option("patch_size", int, 2, "latent patch size of the diffusion model"),
    # text-to-image-to-video
    Option("use_t2i2v", str2bool, False, "generate the first frame with Flux-dev, then image-to-video"),
    Option("img_flux", is_dict=True, default=None, help="the Flux-dev model section (t2i2v)"),
    Option("img_flux_ae", is_dict=True, default=None, help="the Flux image autoencoder section (t2i2v)"),
    Option("img_resolution", str, "768px", "resolution of the generated first frame (t2i2v)"),
    # output
    Option("save_dir", str, "samples", "output folder"),
    Option("save_prefix", str, "", "file-name prefix"),
    Option("prompt_as_path", str2bool, False, "name files by prompt and skip finished ones"),
    Option("save_latent", str2bool, False, "also write each sample's latent next to it (latents/)"),
    Option("no_vae_decode", str2bool, False, "write latents only, no VAE (three-stage pipeline, text-to-video)"),
    Option("text_embed_folder", optional(str), None, "read T5 + CLIP embeddings ({index:04d}.npz, negatives in "
                                                     "neg/) from here; the text encoders are not loaded"),
    Option("write_prompts", optional(str), None, "write the prompts with their suffixes (and the negatives to "
                                                 "FILE.neg.txt) and exit: stage 1 of the three-stage pipeline"),
    Option("verbose", int, 1, "1: progress over prompts; 2: also over sampling steps"),
    # models
    Option("model", is_dict=True, default=None, help="diffusion model {type: flux, from_pretrained: ..., ...}"),
    Option("ae", is_dict=True, default=None, help="video autoencoder {type: hunyuan_vae, ...}"),
    Option("t5", is_dict=True, default=None, help="T5 text embedder {type: text_embedder, max_length: 512, ...}"),
    Option("clip", is_dict=True, default=None, help="CLIP text embedder {type: text_embedder, max_length: 77, ...}"),
    Option("ckpt_path", optional(str), None, "diffusion model weights (overrides model.from_pretrained)"),
    Option("random_weights_dir", str, "models/random-init", "where random weights of null from_pretrained go"),
    *runtime_options(),
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
    opts = {**SAMPLING_DEFAULTS, **given}
    for key in SAMPLING_ALIASES:
        if cfg.get(key) is not None:
            opts[key] = cfg[key]
    if opts["method"] not in ("i2v", "distill"):
        raise ConfigError(f"sampling_option.method must be 'i2v' (the video model) or 'distill', "
                          f"got {opts['method']!r}")
    return opts


def parse_v2(argv=None) -> Config:
    cfg = v2_schema().parse(argv)
    cfg.sampling = sampling_options(cfg)
    return cfg
