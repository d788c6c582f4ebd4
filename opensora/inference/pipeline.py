"""The sampling loop of ``scripts/inference.py``: prompts -> text embeddings -> latents -> videos.

Order of work per batch (upstream 1.2): JSON suffix -> references -> per sample k: scores and
cleaning -> per loop: prompt segment, condition on the previous clip, noise, mask strategy,
sampling, decoding -> join the loops -> save. Differences from upstream, all deliberate:
- the noise of sample (prompt index i, k, loop) comes from a generator seeded with (seed, i, k, loop),
  so a resumed run (``prompt_as_path``), another batch size or the three-stage pipeline give the
  same videos as one uninterrupted run;
- no prompt is an error (upstream loops forever), a URL reference is refused;
- ``neg_prompt`` replaces the learned null caption in guidance;
- ``text_embed_folder`` reads cached T5 embeddings, ``no_vae_decode``/``save_latent`` write latents.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

import mindspore as ms

from ..config import ConfigError
from ..datasets.aspect import get_num_frames
from ..datasets.embedding_cache import read_text_embedding
from ..dtypes import canonical
from ..models.layers import forms
from ..models.stdit.stdit3 import STDiT3
from ..models.vae.geometry import FrameCountError, geometry_of
from ..schedulers.guidance import TextCondition
from . import components
from .mask_strategy import apply_mask_strategy, parse_mask_strategy, loop_condition
from .output import finished, save_latent, save_path_name, save_sample
from .presets import model_size_args, resolve_image_size, resolve_save_fps
from .prompts import extract_json_from_prompts, load_prompts, process_prompt, prompt_for_loop
from .references import read_reference, split_references

logger = logging.getLogger(__name__)



def gather_prompts(cfg) -> list[str]:
    if cfg.prompt:
        prompts = list(cfg.prompt)[cfg.start_index:cfg.end_index]
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


class InferencePipeline:
    """Holds the built components; :meth:`run` samples every prompt. ``stats`` collects timings."""

    def __init__(self, cfg):
        self.cfg = cfg
        for key in ("model", "vae", "scheduler"):
            if not cfg.get(key):
                raise ConfigError(f"the config needs a '{key}' section (see configs/*/inference/*.yaml)")
        self.image_size = resolve_image_size(cfg.image_size, cfg.resolution, cfg.aspect_ratio)
        self.num_frames = get_num_frames(cfg.num_frames)
        self.save_fps = resolve_save_fps(cfg.save_fps, cfg.fps, cfg.frame_interval)
        self.prompts = gather_prompts(cfg)
        self.stats: dict = {"load_s": {}, "videos": []}
        self.text_encoder = self.vae = self.model = self.scheduler = None
        self._blockwise = None
        self.dtype = canonical(cfg.dtype)

    # ------------------------------------------------------------------ building
    def conditioned(self) -> bool:
        """Whether frames are given (references, loops): that needs the VAE and a model that takes x_mask."""
        given = any(r for r in per_prompt(self.cfg.reference_path, len(self.prompts), "reference_path"))
        return given or any("reference_path" in p for p in self.prompts) or self.cfg.loop > 1

    def needs_vae(self) -> bool:
        if self.cfg.no_vae_decode and self.conditioned():
            raise ConfigError("references and loops need the VAE (to encode frames); drop --no_vae_decode")
        return not self.cfg.no_vae_decode or self.conditioned()

    def load(self):
        cfg, rnd = self.cfg, self.cfg.random_weights_dir
        t0 = time.perf_counter()
        caption_channels = model_max_length = None
        if cfg.text_embed_folder:
            first = read_text_embedding(self._cache_file(cfg.start_index))
            model_max_length, caption_channels = first["text_emb"].shape
        else:
            if not cfg.text_encoder:
                raise ConfigError("the config needs a 'text_encoder' section, or use --text_embed_folder")
            self.text_encoder = components.build_text_encoder(cfg.text_encoder, rnd)
            caption_channels, model_max_length = self.text_encoder.output_dim, self.text_encoder.model_max_length
        self.stats["load_s"]["text_encoder"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.needs_vae():
            self.vae = components.build_vae(cfg.vae, rnd)
            if self.dtype != "float32":
                from ..models.layers.precision import cast_parameters

                cast_parameters(self.vae, getattr(ms, self.dtype))  # upstream's vae.to(dtype)
        self.geometry = self.vae.geometry if self.vae is not None else geometry_of(cfg.vae)
        self.latent_size = self.geometry.latent_size((self.num_frames, *self.image_size))
        self.latent_channels = self.geometry.channels
        if cfg.loop > 1:
            self.trim_frames()  # a condition length the VAE cannot map fails before the models load
        self.stats["load_s"]["vae"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        model_cfg = dict(cfg.model)
        model_cfg.setdefault("dtype", self.dtype)
        if cfg.enable_flash_attn is not None:
            model_cfg["enable_flash_attn" if "enable_flashattn" not in model_cfg else "enable_flashattn"] = \
                cfg.enable_flash_attn
        self.model = components.build_model(
            model_cfg, rnd, cfg.ckpt_path, input_size=tuple(self.latent_size), in_channels=self.latent_channels,
            caption_channels=int(caption_channels), model_max_length=int(model_max_length))
        if self.conditioned() and not self.model.frame_conditioning:
            raise ConfigError(f"{cfg.model['type']} takes no frame conditioning (x_mask): references, mask "
                              "strategies and loops need STDiT2 (1.1) or STDiT3 (1.2)")
        if cfg.blockwise and not isinstance(self.model, STDiT3):
            raise ConfigError(f"--blockwise runs STDiT3 models only, not {cfg.model['type']}")
        self.stats["load_s"]["model"] = time.perf_counter() - t0

        sched = dict(cfg.scheduler)
        if cfg.num_sampling_steps is not None:
            sched["num_sampling_steps"] = cfg.num_sampling_steps
        if cfg.cfg_scale is not None:
            sched["cfg_scale"] = cfg.cfg_scale
        self.scheduler = components.build_scheduler(sched)
        return self

    # ------------------------------------------------------------------ text
    def _cache_file(self, index: int) -> str:
        return os.path.join(self.cfg.text_embed_folder, f"{index:04d}.npz")

    def _clean(self):
        if not self.cfg.clean_caption:
            return None
        from ..models.text_encoder.text_cleaning import text_preprocessing

        return text_preprocessing

    def process(self, prompt: str) -> str:
        c = self.cfg
        return process_prompt(prompt, self._clean(), c.aes, c.flow, c.camera_motion)

    def text_condition(self, texts: list[str], indices: list[int]) -> TextCondition:
        """Caption embeddings (T5 or the cache), and the null caption or the negative prompt's."""
        b = len(texts)
        if self.text_encoder is None:
            ys, masks = [], []
            for text, index in zip(texts, indices):
                entry = read_text_embedding(self._cache_file(index))
                if entry["text"] != text:
                    raise ConfigError(
                        f"{self._cache_file(index)} holds the embedding of {entry['text']!r}, but this run's prompt "
                        f"{index} is {text!r} (after score suffixes and cleaning); write the cache from the same "
                        "processed prompts (run_scripts/run_sample_3stages.sh does)")
                ys.append(entry["text_emb"])
                masks.append(entry["mask"])
            y, mask = np.stack(ys)[:, None], np.stack(masks).astype(np.int32)
        else:
            enc = self.text_encoder.encode(texts)
            y, mask = enc["y"].astype(ms.float32), enc["mask"]
        if self.cfg.neg_prompt is not None:
            if self.text_encoder is None:
                raise ConfigError("--neg-prompt needs the text encoder; it cannot be used with --text_embed_folder")
            neg = self.text_encoder.encode([self.process(self.cfg.neg_prompt)] * b)
            return TextCondition(y, mask, neg["y"].astype(ms.float32), neg["mask"])
        return TextCondition(y, mask, self.model.y_embedder.null(b))

    def write_prompts(self, path: str) -> int:
        """Stage 1 of the three-stage pipeline: the prompts as T5 must see them, before cleaning
        (infer_t5.py cleans prompts itself), one per line in prompt order."""
        texts, _, _ = extract_json_from_prompts(self.prompts, [""] * len(self.prompts), [""] * len(self.prompts))
        c = self.cfg
        lines = [process_prompt(t, None, c.aes, c.flow, c.camera_motion) for t in texts]
        if any("\n" in line for line in lines):
            raise ConfigError("prompts must be single lines")
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        return len(lines)

    # ------------------------------------------------------------------ references
    def encode_references(self, paths: list[str]) -> list:
        refs = []
        for path in paths:
            pixels = read_reference(path, self.image_size)
            z = self.vae.encode(ms.Tensor(pixels[None]).astype(getattr(ms, self.dtype)))
            refs.append(z.astype(ms.float32).asnumpy()[0])
        return refs

    # ------------------------------------------------------------------ sampling
    def noise(self, indices: list[int], k: int, loop_i: int) -> np.ndarray:
        shape = (self.latent_channels, *self.latent_size)
        return np.stack([np.random.default_rng([self.cfg.seed, i, k, loop_i]).standard_normal(shape, dtype=np.float32)
                         for i in indices])

    def sampling_model(self):
        """The model as the sampler calls it: itself, or block by block (``blockwise``, STDiT3). On Ascend the
        model's blocks already share one compiled graph per kind (``forms.reused_graph``): no runner needed."""
        if not self.cfg.blockwise:
            return self.model
        if forms.backend() == "Ascend":
            logger.info("blockwise: on Ascend the whole-model graph reuses its block graphs; running it whole")
            return self.model
        if self._blockwise is None:
            from .blockwise import BlockwiseRunner

            self._blockwise = BlockwiseRunner(self.model)
        return self._blockwise

    def sample(self, text: TextCondition, z: np.ndarray, mask, indices, k, loop_i) -> ms.Tensor:
        kwargs = model_size_args(self.cfg.multi_resolution, z.shape[0], self.image_size, self.num_frames, self.cfg.fps)
        gen = np.random.default_rng([self.cfg.seed, indices[0], k, loop_i, 1])
        t0 = time.perf_counter()
        dtype = getattr(ms, self.dtype)
        z = ms.Tensor(z).astype(dtype).astype(ms.float32)  # upstream draws z in the model dtype; sampling is float32
        out = self.scheduler.sample(self.sampling_model(), z, text, kwargs, mask=mask, generator=gen,
                                    progress_bar=self.cfg.verbose >= 2, dtype=dtype)
        out = out.asnumpy()  # wait for the device
        self.stats.setdefault("sample_s", []).append(time.perf_counter() - t0)
        return ms.Tensor(out)

    def decode(self, latent: ms.Tensor) -> np.ndarray:
        t0 = time.perf_counter()
        video = self.vae.decode(latent.astype(getattr(ms, self.dtype)), num_frames=self.num_frames)
        video = video.astype(ms.float32).asnumpy()
        self.stats.setdefault("decode_s", []).append(time.perf_counter() - t0)
        return video

    def trim_frames(self) -> int:
        """Pixel frames cut from each later loop: what the condition's latent frames decode to."""
        try:
            return self.geometry.pixel_frames(self.cfg.condition_frame_length)
        except FrameCountError as err:
            raise ConfigError(f"condition_frame_length {self.cfg.condition_frame_length}: {err}") from None

    def run_batch(self, start: int, raw_prompts: list[str], refs_text: list[str], masks_text: list[str]) -> list[str]:
        cfg = self.cfg
        texts, refs_text, masks_text = extract_json_from_prompts(raw_prompts, refs_text, masks_text)
        indices = [cfg.start_index + start + j for j in range(len(texts))]
        for text in masks_text:  # malformed strategies fail before any reference is read
            parse_mask_strategy(text)
        refs = [self.encode_references(split_references(r)) if split_references(r) else [] for r in refs_text]
        saved = []
        for k in range(cfg.num_sample):
            paths = [save_path_name(cfg.save_dir, cfg.sample_name, idx, texts[j], cfg.prompt_as_path, cfg.num_sample, k)
                     for j, idx in enumerate(indices)]
            if cfg.prompt_as_path and all(finished(p) for p in paths):
                logger.info("skipping finished %s", paths)
                continue
            processed = [self.process(t) for t in texts]
            batch_refs = [list(r) for r in refs]
            strategies = list(masks_text)
            clips, latents = [], []
            for loop_i in range(cfg.loop):
                loop_texts = [prompt_for_loop(p, loop_i) for p in processed]
                if loop_i > 0:
                    prev = self.vae.encode(ms.Tensor(clips[-1]).astype(getattr(ms, self.dtype)))
                    prev = prev.astype(ms.float32).asnumpy()
                    for j in range(len(texts)):
                        batch_refs[j].append(prev[j])
                        cond = loop_condition(loop_i, len(batch_refs[j]) - 1, cfg.condition_frame_length,
                                              cfg.condition_frame_edit)
                        strategies[j] = f"{strategies[j]};{cond}" if strategies[j] else cond
                z = self.noise(indices, k, loop_i)
                mask = apply_mask_strategy(z, batch_refs, strategies, loop_i, cfg.align)
                latent = self.sample(self.text_condition(loop_texts, indices), z, mask, indices, k, loop_i)
                latents.append(latent)
                if self.vae is not None and not cfg.no_vae_decode:
                    clips.append(self.decode(latent))
            if cfg.save_latent or cfg.no_vae_decode:
                self.save_latents(latents[-1], paths)
            if not clips:
                saved += paths
                continue
            t0 = time.perf_counter()
            for j, path in enumerate(paths):
                trim = self.trim_frames()
                video = np.concatenate([clips[0][j]] + [c[j][:, trim:] for c in clips[1:]], axis=1)
                saved.append(save_sample(video, path, self.save_fps))
                if cfg.verbose >= 1:
                    print(f"Saved to {saved[-1]}", flush=True)
            self.stats.setdefault("save_s", []).append(time.perf_counter() - t0)
        return saved

    def save_latents(self, latent: ms.Tensor, paths: list[str]) -> None:
        arr = latent.asnumpy()
        for j, path in enumerate(paths):
            target = os.path.join(os.path.dirname(path), "latents", os.path.basename(path) + ".npz")
            save_latent(arr[j], target, self.num_frames, self.save_fps)
            logger.info("latent saved to %s", target)

    def run(self) -> list[str]:
        cfg = self.cfg
        os.makedirs(cfg.save_dir, exist_ok=True)
        n = len(self.prompts)
        refs = per_prompt(cfg.reference_path, n, "reference_path")
        masks = per_prompt(cfg.mask_strategy, n, "mask_strategy")
        starts = range(0, n, cfg.batch_size)
        if cfg.verbose >= 1:
            from tqdm import tqdm

            starts = tqdm(starts, desc="prompts", unit="batch")
        saved = []
        for s in starts:
            e = s + cfg.batch_size
            saved += self.run_batch(s, self.prompts[s:e], refs[s:e], masks[s:e])
        return saved
