"""Everything that can be checked about an inference request before a model is loaded.

:func:`check_request` turns a parsed configuration into an :class:`InferenceRequest` or raises an
:class:`~opensora.errors.InputError` naming the option or file: sizes and frame counts, prompts (none
empty), the JSON suffixes, mask strategies and reference files, conditioning the chosen model and sampler
cannot do, the scheduler's values, the output folder (created and tested for writing), every output file
(inside the folder, none shared by two samples, the overwrite policy) and the memory the sizes need.
``scripts/inference.py`` runs it first; another front end (the web app) can call it on its own
requests the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import ConfigError
from ..datasets.aspect import get_num_frames
from ..models.layers import forms
from ..models.vae.geometry import FrameCountError, geometry_of
from ..utils.outputs import prepare_output_dir
from .limits import MemoryEstimate, check_latent_size, check_memory, estimate_sampling_memory
from .mask_strategy import MaskStrategyError, parse_mask_strategy
from .output import SampleOutput, apply_existing_policy, plan_outputs, skip_existing_of
from .presets import resolve_image_size, resolve_save_fps
from .prompts import (PromptError, check_prompt_texts, extract_json_from_prompts, load_prompts, process_prompt,
                      prompt_for_loop)
from .references import check_reference_path, read_reference, split_references


@dataclass
class InferenceRequest:
    """A checked request: the prompts split into text / references / mask strategy, the sizes, and the
    outputs (``plan``: every sample; ``todo``: those to make under the overwrite policy)."""

    prompts: list[str]
    texts: list[str]
    references: list[str]
    mask_strategies: list[str]
    image_size: tuple[int, int]
    num_frames: int
    save_fps: int
    latent_size: list[int]
    latent_channels: int
    conditioned: bool
    plan: list[SampleOutput] = field(default_factory=list)
    todo: list[SampleOutput] = field(default_factory=list)
    estimate: MemoryEstimate | None = None


def gather_prompts(cfg) -> list[str]:
    if cfg.prompt:
        prompts = [str(p).strip() for p in cfg.prompt][cfg.start_index:cfg.end_index]
    elif cfg.prompt_path:
        prompts = load_prompts(cfg.prompt_path, cfg.start_index, cfg.end_index)
    else:
        raise ConfigError("no prompt given: use --prompt TEXT [TEXT ...] or --prompt-path FILE (.txt or .csv)")
    if not prompts:
        raise ConfigError("the prompt list is empty (check --prompt-path and --start-index/--end-index)")
    return prompts


def per_prompt(values, n: int, name: str) -> list:
    """A per-prompt CLI list (reference_path / mask_strategy): empty -> "" each; one -> repeated."""
    if not values:
        return [""] * n
    values = ["" if v is None or str(v).lower() in ("none", "null") else str(v) for v in values]
    if len(values) == 1 and n > 1:
        return values * n
    if len(values) != n:
        raise ConfigError(f"--{name.replace('_', '-')} has {len(values)} entries for {n} prompts; give one per prompt")
    return values


def _check_conditioning(cfg, references: list[str], strategies: list[str], image_size) -> bool:
    """Mask strategies parse, their references can be read, and the model and sampler can condition on frames."""
    parsed = [parse_mask_strategy(text) for text in strategies]  # malformed strategies first (upstream's order)
    readable: set[str] = set()
    for j, (refs, groups) in enumerate(zip(references, parsed)):
        paths = split_references(refs)
        for path in paths:
            check_reference_path(path)
        for path in set(paths) - readable:  # decoded now (small next to the models): a damaged file fails first
            read_reference(path, image_size)
            readable.add(path)
        for group in groups:
            if group.loop_id >= cfg.loop:
                raise MaskStrategyError(f"prompt {cfg.start_index + j}: mask strategy group {group} is for loop "
                                        f"{group.loop_id}, but --loop is {cfg.loop}: it would never apply")
            if group.ref_id >= len(paths) + group.loop_id:
                raise MaskStrategyError(
                    f"prompt {cfg.start_index + j}: mask strategy refers to reference {group.ref_id}, but it has "
                    f"{len(paths)} reference(s) (+1 per earlier loop); give them with --reference-path 'a.png;b.mp4'"
                    " or the JSON suffix")
    conditioned = cfg.loop > 1 or any(split_references(r) for r in references) or any(s for s in strategies)
    if not conditioned:
        return False
    what = "references, mask strategies and loops"
    if str(cfg.model.get("type", "")).startswith("STDiT-"):
        raise ConfigError(f"{what} need a model that takes a frame mask (STDiT2, STDiT3); "
                          f"{cfg.model['type']} (Open-Sora 1.0) does not")
    if cfg.scheduler.get("type") == "dpm-solver":
        raise ConfigError(f"{what} need the rflow or iddpm scheduler; dpm-solver has no frame conditioning")
    if cfg.no_vae_decode:
        raise ConfigError(f"{what} need the VAE (to encode frames); drop --no_vae_decode")
    return True


def _check_scheduler(cfg) -> None:
    """The scheduler section's step count and guidance scale obey the same ranges as the flags."""
    from .options import OPTIONS

    by_name = {opt.name: opt for opt in OPTIONS}
    for key in ("num_sampling_steps", "cfg_scale"):
        if cfg.scheduler.get(key) is not None:
            by_name[key].convert(cfg.scheduler[key], f"scheduler.{key}")


def _check_loops(cfg, geometry, latent_frames: int) -> None:
    if cfg.loop <= 1:
        return
    if cfg.condition_frame_length >= latent_frames:
        raise ConfigError(f"condition_frame_length ({cfg.condition_frame_length} latent frames) must be smaller "
                          f"than the {latent_frames} latent frames of one clip for --loop {cfg.loop}")
    try:
        geometry.pixel_frames(cfg.condition_frame_length)
    except FrameCountError as err:
        raise ConfigError(f"condition_frame_length {cfg.condition_frame_length}: {err}") from None


def _check_text_cache(cfg, texts: list[str]) -> None:
    """Stage 2 of the three-stage pipeline: every prompt's cache file exists and holds this prompt."""
    from ..datasets.embedding_cache import read_text_embedding

    folder = cfg.text_embed_folder
    if not os.path.isdir(folder):
        raise ConfigError(f"--text_embed_folder {folder}: not a folder (write it with scripts/infer_t5.py)")
    indices = range(cfg.start_index, cfg.start_index + len(texts))
    missing = [i for i in indices if not os.path.isfile(os.path.join(folder, f"{i:04d}.npz"))]
    if missing:
        raise ConfigError(f"--text_embed_folder {folder}: no embedding for prompt(s) {missing[:10]} "
                          f"({missing[0]:04d}.npz ...); run stage 1 (scripts/infer_t5.py) for the same prompt file")
    clean = None
    if cfg.clean_caption:
        from ..models.text_encoder.text_cleaning import text_preprocessing as clean
    for i, text in zip(indices, texts):
        expected = prompt_for_loop(process_prompt(text, clean, cfg.aes, cfg.flow, cfg.camera_motion), 0)
        cached = read_text_embedding(os.path.join(folder, f"{i:04d}.npz"))["text"]
        if cached != expected:
            raise ConfigError(f"{os.path.join(folder, f'{i:04d}.npz')} holds the embedding of {cached!r}, but prompt "
                              f"{i} is {expected!r} (after score suffixes and cleaning); write the cache from the same "
                              "processed prompts (run_scripts/run_sample_3stages.sh does)")


def video_extension(cfg, num_frames: int) -> str | None:
    if cfg.no_vae_decode:
        return None
    return ".png" if num_frames == 1 and cfg.loop == 1 else ".mp4"


def check_request(cfg, outputs: bool = True) -> InferenceRequest:
    """All checks that need no model; ``outputs=False`` skips the output folder (``--write-prompts``)."""
    for key in ("model", "vae", "scheduler"):
        if not cfg.get(key):
            raise ConfigError(f"the config needs a '{key}' section (see configs/*/inference/*.yaml)")
    if not cfg.text_encoder and not cfg.text_embed_folder:
        raise ConfigError("the config needs a 'text_encoder' section, or use --text_embed_folder")
    image_size = resolve_image_size(cfg.image_size, cfg.resolution, cfg.aspect_ratio)
    num_frames = get_num_frames(cfg.num_frames)
    save_fps = resolve_save_fps(cfg.save_fps, cfg.fps, cfg.frame_interval)
    prompts = gather_prompts(cfg)
    n = len(prompts)
    texts, references, strategies = extract_json_from_prompts(
        prompts, per_prompt(cfg.reference_path, n, "reference_path"), per_prompt(cfg.mask_strategy, n, "mask_strategy"))
    check_prompt_texts(texts, cfg.start_index)
    if any("\n" in t for t in texts):
        raise PromptError("prompts must be single lines")
    conditioned = _check_conditioning(cfg, references, strategies, image_size)
    if cfg.neg_prompt is not None and cfg.text_embed_folder:
        raise ConfigError("--neg-prompt needs the text encoder; it cannot be used with --text_embed_folder")
    if cfg.blockwise and not str(cfg.model.get("type", "")).startswith("STDiT3"):
        raise ConfigError(f"--blockwise: only STDiT3 models support it, not {cfg.model.get('type')}")
    _check_scheduler(cfg)
    if cfg.ckpt_path and not os.path.exists(cfg.ckpt_path):
        raise ConfigError(f"--ckpt_path {cfg.ckpt_path}: model weights not found (a converted .ckpt, or the "
                          "directory of a Hugging Face-style checkpoint)")
    geometry = geometry_of(cfg.vae)
    latent_size, channels = geometry.latent_size((num_frames, *image_size)), geometry.channels
    check_latent_size(latent_size, image_size, geometry.spatial_factor)
    _check_loops(cfg, geometry, latent_size[0])
    if cfg.text_embed_folder:
        _check_text_cache(cfg, texts)
    request = InferenceRequest(prompts, texts, references, strategies, image_size, num_frames, save_fps,
                               list(latent_size), int(channels), conditioned)
    if not outputs:
        return request
    prepare_output_dir(cfg.save_dir, "--save-dir")
    ext = video_extension(cfg, num_frames)
    request.plan = plan_outputs(cfg.save_dir, texts, cfg.start_index, cfg.sample_name, cfg.prompt_as_path,
                                cfg.num_sample, ext, cfg.save_latent or cfg.no_vae_decode)
    request.todo = apply_existing_policy(request.plan, cfg.overwrite, skip_existing_of(cfg))
    frames_out = num_frames * cfg.loop  # an upper bound of the joined loops
    on_host = forms.samples_in_host_memory(cfg.device_target)
    whole_graph = cfg.mode == "graph" and not cfg.blockwise and on_host
    request.estimate = estimate_sampling_memory(cfg.model, latent_size, min(cfg.batch_size, n), frames_out,
                                                image_size, whole_graph, write_video=ext is not None)
    if on_host:
        check_memory(request.estimate, f"sampling {num_frames} frames at {image_size[0]}x{image_size[1]} "
                                       f"with batch size {min(cfg.batch_size, n)}", cfg.skip_size_check)
    return request
