"""The sampling loop of ``scripts/inference.py``: prompts -> text embeddings -> latents -> videos.

Order of work per batch (upstream 1.2): JSON suffix -> references -> per sample k: scores and
cleaning -> per loop: prompt segment, condition on the previous clip, noise, mask strategy,
sampling, decoding -> join the loops -> save. Differences from upstream, all deliberate:
- the noise of sample (prompt index i, k, loop) comes from a generator seeded with (seed, i, k, loop),
  also the noise the samplers draw inside their loop (one generator per sample), and the VAE's
  posterior draw when it encodes a reference (seed, i, reference) or the previous loop's clip (each clip
  alone), so a resumed run (``--skip-existing``), another batch size or the three-stage pipeline give
  the same videos as one uninterrupted run (upstream draws these from one global generator);
- no prompt is an error (upstream loops forever), a URL reference is refused;
- everything that needs no model is checked first (``request.check_request``: sizes, prompts,
  references, outputs and their overwrite policy, memory); NaN/inf from the text encoder, the sampler or
  the decoder stops the run naming the prompt, sample and step; a run that wrote fewer files than it
  planned fails;
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
from ..datasets.embedding_cache import read_text_embedding
from ..dtypes import canonical
from ..errors import NonFiniteError, RunError
from ..models.layers import forms
from ..models.stdit.stdit3 import STDiT3
from ..models.vae.geometry import FrameCountError, geometry_of
from ..schedulers.guidance import TextCondition
from ..utils.files import write_text_atomically
from ..utils.finite import nonfinite_cause, nonfinite_rows
from . import components
from .mask_strategy import apply_mask_strategy, loop_condition
from .output import SampleOutput, latent_file, save_latent, save_sample
from .presets import model_size_args
from .prompts import process_prompt, prompt_for_loop
from .references import read_reference, split_references
from .request import check_request
from .sequence_parallel import sampling_rank_writes, sp_size_of
from .sharing import ProgressHook, check_models_match

logger = logging.getLogger(__name__)



MODELS_WITH_SEQUENCE_PARALLEL = ("STDiT3-XL/2", "STDiT3-3B/2")


class InferencePipeline(ProgressHook):
    """Holds the built components; :meth:`run` samples every prompt. ``stats`` collects timings."""

    def __init__(self, cfg, outputs: bool = True):
        """``outputs=False``: no output folder or names checked (``--write-prompts``; the web app's loading)."""
        self.cfg = cfg
        self.request = check_request(cfg, outputs=outputs and not cfg.write_prompts)  # before anything is loaded
        self.image_size, self.num_frames = self.request.image_size, self.request.num_frames
        self.save_fps, self.prompts = self.request.save_fps, self.request.prompts
        self.stats: dict = {"load_s": {}, "videos": []}
        self.text_encoder = self.vae = self.model = self.scheduler = None
        self._blockwise = None
        self.dtype = canonical(cfg.dtype)
        # progress hook (the web app's progress bar and Cancel): on_progress(stage, done, total) after each
        # sampling step ("sampling") and around decoding ("decoding", 0/1 then 1/1); raising in it stops the run
        self.on_progress = None
        self.sp_size = sp_size_of(cfg)
        self.writes = True  # rank 0 writes the outputs (sequence parallel: every rank samples the same videos)

    # ------------------------------------------------------------------ building
    def conditioned(self) -> bool:
        """Whether frames are given (references, loops): that needs the VAE and a model that takes x_mask."""
        return self.request.conditioned

    def needs_vae(self) -> bool:
        return not self.cfg.no_vae_decode or self.conditioned()

    def load(self):
        cfg, rnd = self.cfg, self.cfg.random_weights_dir
        if self.sp_size > 1:
            self._check_sequence_parallel()  # before any model
        t0 = time.perf_counter()
        caption_channels = model_max_length = None
        if cfg.text_embed_folder:
            first = read_text_embedding(self._cache_file(cfg.start_index))
            model_max_length, caption_channels = first["text_emb"].shape
        else:
            self.text_encoder = components.build_text_encoder(cfg.text_encoder, rnd)
            caption_channels, model_max_length = self.text_encoder.output_dim, self.text_encoder.model_max_length
        self.stats["load_s"]["text_encoder"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.needs_vae():
            self.vae = components.build_vae(cfg.vae, rnd)
            if self.dtype != "float32":
                from ..models.layers.precision import cast_parameters

                cast_parameters(self.vae, getattr(ms, self.dtype))  # upstream's vae.to(dtype)
        self._set_latent_size()
        self.stats["load_s"]["vae"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        model_cfg = dict(cfg.model)
        model_cfg.setdefault("dtype", self.dtype)
        if self.sp_size > 1:
            model_cfg["enable_sequence_parallelism"] = True
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
        self._build_scheduler()
        return self

    def _set_latent_size(self) -> None:
        self.geometry = self.vae.geometry if self.vae is not None else geometry_of(self.cfg.vae)
        self.latent_size = self.geometry.latent_size((self.num_frames, *self.image_size))
        self.latent_channels = self.geometry.channels
        if self.cfg.loop > 1:
            self.trim_frames()  # a condition length the VAE cannot map fails before the models load

    def _build_scheduler(self) -> None:
        sched = dict(self.cfg.scheduler)
        if self.cfg.num_sampling_steps is not None:
            sched["num_sampling_steps"] = self.cfg.num_sampling_steps
        if self.cfg.cfg_scale is not None:
            sched["cfg_scale"] = self.cfg.cfg_scale
        self.scheduler = components.build_scheduler(sched)

    # what the loaded models depend on: a request that changes one of these needs another load
    MODEL_KEYS = ("model", "vae", "text_encoder", "ckpt_path", "dtype", "random_weights_dir", "enable_flash_attn",
                  "blockwise", "text_embed_folder", "device_target", "mode", "jit_level")

    def share_models(self, loaded: "InferencePipeline") -> "InferencePipeline":
        """Use the models another pipeline loaded (the web app loads them once; each request is a new pipeline
        with its own configuration). Sizes, steps, guidance and prompts may differ; what the models were built
        from may not."""
        check_models_match(self.MODEL_KEYS, self.cfg, loaded.cfg)
        if loaded.vae is None and self.needs_vae():
            raise ConfigError("this request needs the VAE, which was not loaded (--no_vae_decode)")
        self.text_encoder, self.vae, self.model = loaded.text_encoder, loaded.vae, loaded.model
        self._blockwise = loaded.sampling_model() if self.cfg.blockwise else None
        self._set_latent_size()
        fixed = getattr(self.model, "input_size", None)  # STDiT 1.0 is built for one latent size
        if fixed is not None and None not in fixed and tuple(fixed) != tuple(self.latent_size):
            raise ConfigError(f"{self.cfg.model['type']} generates the size it was built for only (latent "
                              f"{tuple(fixed)}); this request needs {tuple(self.latent_size)}")
        if self.conditioned() and not self.model.frame_conditioning:
            raise ConfigError(f"{self.cfg.model['type']} takes no frame conditioning (x_mask)")
        self._build_scheduler()
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
        self._check_finite_text(y, indices, "prompt")
        if self.cfg.neg_prompt is not None:
            if self.text_encoder is None:
                raise ConfigError("--neg-prompt needs the text encoder; it cannot be used with --text_embed_folder")
            neg = self.text_encoder.encode([self.process(self.cfg.neg_prompt)] * b)
            self._check_finite_text(neg["y"], indices[:1], "negative prompt")
            return TextCondition(y, mask, neg["y"].astype(ms.float32), neg["mask"])
        return TextCondition(y, mask, self.model.y_embedder.null(b))

    def _check_finite_text(self, y, indices, what: str) -> None:
        rows = nonfinite_rows(y)
        if rows:
            half = " (T5 overflows in float16: use dtype bf16 or fp32)" if self.dtype == "float16" else \
                " (check the text encoder's weights)"
            raise NonFiniteError(f"the text embedding of {what} {[indices[r] for r in rows if r < len(indices)]} "
                                 f"holds NaN/inf{half}")

    def write_prompts(self, path: str) -> int:
        """Stage 1 of the three-stage pipeline: the prompts as T5 must see them, before cleaning
        (infer_t5.py cleans prompts itself), one per line in prompt order; written atomically."""
        from ..utils.outputs import prepare_output_dir

        c = self.cfg
        lines = [process_prompt(t, None, c.aes, c.flow, c.camera_motion) for t in self.request.texts]
        prepare_output_dir(os.path.dirname(os.path.abspath(path)), "--write-prompts")
        write_text_atomically(path, "".join(line + "\n" for line in lines))
        return len(lines)

    # ------------------------------------------------------------------ references
    def encode_frames(self, pixels: np.ndarray, key: list[int]) -> np.ndarray:
        """VAE-encode one clip (C, T, H, W) -> its latent. The encoder draws from its posterior (as upstream's
        does); that draw is seeded by ``key`` so that it does not depend on the batch or on what ran before."""
        ms.set_seed(int(np.random.default_rng(key).integers(2**31 - 1)))
        z = self.vae.encode(ms.Tensor(pixels[None]).astype(getattr(ms, self.dtype)))
        return z.astype(ms.float32).asnumpy()[0]

    def encode_references(self, paths: list[str], index: int) -> list:
        """The latents of prompt ``index``'s references, each drawn with the key (seed, index, reference)."""
        return [self.encode_frames(read_reference(path, self.image_size), [self.cfg.seed, index, r, 2])
                for r, path in enumerate(paths)]

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
        # the sampler's in-loop noise, one generator per sample: the same for any batch size
        gens = [np.random.default_rng([self.cfg.seed, i, k, loop_i, 1]) for i in indices]
        t0 = time.perf_counter()
        dtype = getattr(ms, self.dtype)
        z = ms.Tensor(z).astype(dtype).astype(ms.float32)  # upstream draws z in the model dtype; sampling is float32
        try:
            out = self.scheduler.sample(self.sampling_model(), z, text, kwargs, mask=mask, generator=gens,
                                        progress_bar=self._step_progress(), dtype=dtype)
        except NonFiniteError as err:
            raise NonFiniteError(f"{err}: prompt(s) {[indices[r] for r in err.rows]}, sample {k}, loop {loop_i}; "
                                 f"likely cause: {self._nonfinite_cause()}", err.step, err.rows) from None
        out = out.asnumpy()  # wait for the device
        self.stats.setdefault("sample_s", []).append(time.perf_counter() - t0)
        return ms.Tensor(out)

    def _nonfinite_cause(self) -> str:
        return nonfinite_cause(self.dtype, f"cfg_scale {getattr(self.scheduler, 'cfg_scale', '?')}")

    def decode(self, latent: ms.Tensor, indices=None) -> np.ndarray:
        self._report("decoding", 0, 1)
        t0 = time.perf_counter()
        video = self.vae.decode(latent.astype(getattr(ms, self.dtype)), num_frames=self.num_frames)
        video = video.astype(ms.float32).asnumpy()
        rows = nonfinite_rows(video)
        if rows:
            which = [indices[r] for r in rows] if indices else rows
            raise NonFiniteError(f"the VAE decoded NaN/inf for prompt(s) {which} (finite latents); likely cause: "
                                 f"the VAE's weights, or float16 overflow (dtype {self.cfg.dtype})", rows=rows)
        self.stats.setdefault("decode_s", []).append(time.perf_counter() - t0)
        self._report("decoding", 1, 1)
        return video

    def trim_frames(self) -> int:
        """Pixel frames cut from each later loop: what the condition's latent frames decode to."""
        try:
            return self.geometry.pixel_frames(self.cfg.condition_frame_length)
        except FrameCountError as err:
            raise ConfigError(f"condition_frame_length {self.cfg.condition_frame_length}: {err}") from None

    def run_batch(self, jobs: list[SampleOutput], refs: dict) -> list[str]:
        """Sample, decode and save ``jobs`` (one batch, all with the same sample number k); ``refs``: the
        encoded references of each prompt index."""
        cfg, req = self.cfg, self.request
        k = jobs[0].k
        indices = [job.index for job in jobs]
        texts = [req.texts[i - cfg.start_index] for i in indices]
        processed = [self.process(t) for t in texts]
        batch_refs = [list(refs.get(i, [])) for i in indices]
        strategies = [req.mask_strategies[i - cfg.start_index] for i in indices]
        clips, latents = [], []
        for loop_i in range(cfg.loop):
            loop_texts = [prompt_for_loop(p, loop_i) for p in processed]
            if loop_i > 0:
                for j, index in enumerate(indices):  # each clip alone: its draw keyed by (seed, index, k, loop)
                    batch_refs[j].append(self.encode_frames(clips[-1][j], [cfg.seed, index, k, loop_i, 3]))
                    cond = loop_condition(loop_i, len(batch_refs[j]) - 1, cfg.condition_frame_length,
                                          cfg.condition_frame_edit)
                    strategies[j] = f"{strategies[j]};{cond}" if strategies[j] else cond
            z = self.noise(indices, k, loop_i)
            mask = apply_mask_strategy(z, batch_refs, strategies, loop_i, cfg.align)
            latent = self.sample(self.text_condition(loop_texts, indices), z, mask, indices, k, loop_i)
            latents.append(latent)
            if self.vae is not None and not cfg.no_vae_decode and (self.writes or loop_i + 1 < cfg.loop):
                clips.append(self.decode(latent, indices))
        saved = []
        if not self.writes:  # another rank writes these samples
            return saved
        if cfg.save_latent or cfg.no_vae_decode:
            saved += self.save_latents(latents[-1], jobs)
        if clips:
            t0 = time.perf_counter()
            trim = self.trim_frames() if len(clips) > 1 else 0
            for j, job in enumerate(jobs):
                video = np.concatenate([clips[0][j]] + [c[j][:, trim:] for c in clips[1:]], axis=1)
                saved.append(save_sample(video, job.base, self.save_fps))
                if cfg.verbose >= 1:
                    print(f"Saved to {saved[-1]}", flush=True)
            self.stats.setdefault("save_s", []).append(time.perf_counter() - t0)
        return saved

    def _check_sequence_parallel(self):
        if self.cfg.model.get("type") not in MODELS_WITH_SEQUENCE_PARALLEL:
            raise ConfigError(f"sp_size > 1: {self.cfg.model.get('type')} has no sequence parallel path "
                              f"({', '.join(MODELS_WITH_SEQUENCE_PARALLEL)} have)")
        self.writes = sampling_rank_writes(self.sp_size)

    def save_latents(self, latent: ms.Tensor, jobs: list[SampleOutput]) -> list[str]:
        arr, written = latent.asnumpy(), []
        for j, job in enumerate(jobs):
            written.append(save_latent(arr[j], latent_file(job.base), self.num_frames, self.save_fps))
            logger.info("latent saved to %s", written[-1])
        return written

    def run(self) -> list[str]:
        """Make every planned sample not skipped by the overwrite policy; -> the files written. The plan is
        made again on each call (the output folder may have changed since)."""
        cfg = self.cfg
        self.request = check_request(cfg)
        todo = {(job.index, job.k): job for job in self.request.todo}
        indices = [cfg.start_index + j for j in range(len(self.prompts))]
        starts = range(0, len(indices), cfg.batch_size)
        if cfg.verbose >= 1:
            from tqdm import tqdm

            starts = tqdm(starts, desc="prompts", unit="batch")
        saved = []
        for s in starts:
            batch = indices[s:s + cfg.batch_size]
            if not any((i, k) in todo for i in batch for k in range(cfg.num_sample)):
                continue
            refs = {i: self.encode_references(split_references(self.request.references[i - cfg.start_index]), i)
                    for i in batch if split_references(self.request.references[i - cfg.start_index])}
            for k in range(cfg.num_sample):
                jobs = [todo[(i, k)] for i in batch if (i, k) in todo]
                if jobs:
                    saved += self.run_batch(jobs, refs)
        missing = [f for job in todo.values() for f in job.files if not os.path.isfile(f)] if self.writes else []
        if missing:
            raise RunError(f"{len(missing)} planned output file(s) were not written: {missing[:5]}")
        return saved
