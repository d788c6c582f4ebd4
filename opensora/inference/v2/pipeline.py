"""Open-Sora 2.0 inference: prompts -> T5 + CLIP -> [Flux-dev first frame] -> references -> MMDiT -> video.

Stages, as upstream's ``scripts/diffusion/inference.py`` and ``api_fn`` run them for each batch:

1. ``text``: T5 (512 tokens, no mask) and CLIP (pooled) of the prompts with their ``N FPS.`` and motion
   score suffixes and of the negative prompts (``""``); for text-to-image-to-video also of the prompts
   as given (the first frame is made from those);
2. ``image`` (t2i2v): Flux-dev samples the first frame with the distilled sampler (guidance 4.0) at
   ``img_resolution`` (training-mode size table), 3. ``image_decode``: the Flux AE decodes it to
   ``<save_dir>/<video|image>_<res>/generated_condition/<name>.png``, which then conditions the video
   as ``i2v_head`` (read back from the PNG and resize-cropped to the video size, as upstream does);
4. ``references``: each prompt's reference frames are read, resize-cropped and encoded by the VAE;
5. ``sample``: the video model denoises per-sample seeded noise with :class:`~opensora.schedulers.flow_v2.I2VDenoiser`;
   image conditions are copied back into every sample's latent;
6. ``decode``: the VAE decodes; the first ``num_frames`` frames are saved (mp4, or png for one frame)
   with the prompt in a ``.txt`` beside, as upstream names them: ``<save_dir>/video_256px/prompt_0000.mp4``.

Outputs follow the 1.x rules (``opensora/inference/output.py``): every file of every sample (video, prompt
text, latent, the t2i first frame) is planned when the pipeline is built, before any model: inside
``save_dir``, no two samples on one file, existing files refused unless ``--overwrite`` (replace) or
``--skip-existing`` (keep finished samples; the default with ``prompt_as_path``); each is written atomically.
NaN/inf from a sampler, a decoder or the text encoders stops the run naming the prompts and the sample, and a
run that wrote fewer files than it planned fails (:class:`~opensora.errors.RunError`).

Without ``offload`` the stages run batch by batch with every model kept once built (upstream's order).
With ``offload`` each stage runs over all batches and its models are released before the next stage
(T5/CLIP, Flux, its AE, the VAE and the video model are never in memory together; the embeddings and
latents in between are kept on the host, about 8 MB per prompt for T5's 512 x 4096 in float32). Both orders
give the same videos: each sample's noise is seeded by (seed, prompt index, sample index, stream), never by
batch position.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

import mindspore as ms

from ...config import ConfigError
from ...datasets import aspect_v2
from ...dtypes import canonical, to_ms_dtype
from ...datasets.embedding_cache import read_text_embedding
from ...errors import NonFiniteError, RunError
from ...models.vae.geometry import geometry_of
from ...schedulers import flow_v2
from ...utils.files import write_text_atomically
from ...utils.finite import nonfinite_cause, nonfinite_rows
from ...utils.outputs import inside, prepare_output_dir
from ..output import (SampleOutput, apply_existing_policy, check_plan, latent_file, sample_files, save_latent,
                      save_sample, skip_existing_of)
from ..prompts import extract_json_from_prompts, load_prompt_rows, safe_file_name
from ..references import check_reference_path, read_reference, split_references
from ..sequence_parallel import sampling_rank_writes, sp_size_of
from ..sharing import ProgressHook, check_models_match
from .components import Models, check_weights
from .conditions import cond_type_of, inference_condition, reference_clips
from .prompts import add_suffixes, motion_score_text

logger = logging.getLogger(__name__)

# the sections sequence parallel splits (the MMDiTs): text and image tokens, heads in the joint attention
SEQUENCE_PARALLEL_MODELS = ("model", "img_flux")

# noise streams of a sample: the video, the t2i first frame, the posterior draws of its reference clips
VIDEO_STREAM, IMAGE_STREAM, REFERENCE_STREAM = 0, 1, 2
T2I_GUIDANCE = 4.0  # upstream's modify_option_to_t2i fixes it


def seeded_noise(seed: int, index: int, k: int, stream: int, shape) -> np.ndarray:
    """One sample's noise, from (seed, prompt index, sample index, stream) alone."""
    return np.random.default_rng([seed, index, k, stream]).standard_normal(tuple(shape), dtype=np.float32)


@dataclass
class Row:
    index: int  # position in the prompt file (output index)
    position: int  # position in this run's selection (three-stage cache files)
    text: str
    ref: str = ""
    name: str = ""
    neg: str = ""


@dataclass
class Batch:
    rows: list[Row]
    k: int
    texts: list[str]  # with suffixes: what the video model is conditioned on
    paths: list[str]  # output paths without extension
    data: dict = field(default_factory=dict)  # stage results


class PipelineV2(ProgressHook):
    """Checks everything a run needs (sizes, frames, prompts, references, weights, every output file) when
    built; :meth:`run` loads models and writes the samples. ``plan``: every sample's files; ``todo``: those
    to make under the overwrite policy. ``stats`` collects timings."""

    def __init__(self, cfg, outputs: bool = True):
        """``outputs=False``: no output folder or files planned (the web app's loading)."""
        self.cfg = cfg
        opts = cfg.sampling
        self.opts = opts
        for key in ("model", "ae"):
            if not cfg.get(key):
                raise ConfigError(f"the config needs a '{key}' section (see configs/opensora-v2/inference/)")
        self.dtype = to_ms_dtype(cfg.dtype)
        self.num_frames = aspect_v2.check_num_frames(opts["num_frames"])
        self.height, self.width = self._video_size(opts)
        self.cond = cond_type_of("i2v_head" if cfg.use_t2i2v else cfg.cond_type)
        if cfg.use_t2i2v and cfg.cond_type != "t2v":
            logger.warning("use_t2i2v: cond_type %s replaced by i2v_head (the generated first frame), as upstream",
                           cfg.cond_type)
        if opts["method"] != "i2v":
            raise ConfigError("the video model samples with method 'i2v'; 'distill' is the t2i first frame's")
        self.motion = motion_score_text(cfg.motion_score)
        self.geometry = geometry_of(cfg.ae)
        self.latent_frames = self.geometry.latent_frames(self.num_frames)
        self.patch = int(cfg.patch_size)
        self.channels = int(cfg.model.get("in_channels", 64)) // self.patch ** 2
        self.latent_hw = (self.height // self.geometry.spatial_factor, self.width // self.geometry.spatial_factor)
        self.seed = int(opts["seed"]) if opts["seed"] is not None else int(cfg.seed)
        self.sp_size = sp_size_of(cfg)
        self.writes = True  # rank 0 writes the outputs (sequence parallel: every rank samples the same videos)
        self.kind = "image" if self.num_frames == 1 else "video"
        self.sub_dir = f"{self.kind}_{opts['resolution']}" if opts["resolution"] else self.kind
        self.rows = self._rows()
        self._check_inputs()
        self.plan: list[SampleOutput] = []
        self.todo: list[SampleOutput] = []
        if outputs and not cfg.write_prompts:  # (stage 1 of the three-stage pipeline writes no sample)
            prepare_output_dir(cfg.save_dir, "--save-dir")
            self.plan = self._plan()
            self.todo = apply_existing_policy(self.plan, cfg.overwrite, skip_existing_of(cfg))
        self.models = Models(cfg, canonical(cfg.dtype), SEQUENCE_PARALLEL_MODELS if self.sp_size > 1 else ())
        self.stats: dict = {"stages_s": {}, "sample_s": [], "decode_s": []}
        # progress hook (the web app's progress bar and Cancel), as 1.x's: on_progress(stage, done, total) after
        # each step of the video sampler ("sampling") and of the t2i first frame's ("first frame"), and around
        # decoding ("decoding", 0/1 then 1/1); raising in it stops the run there
        self.on_progress = None
        self._scratch_dir = None

    # ------------------------------------------------------------------ checks (no model loaded)
    @staticmethod
    def _video_size(opts) -> tuple[int, int]:
        if opts["resolution"] is not None or opts["aspect_ratio"] is not None:
            if opts["resolution"] is None or opts["aspect_ratio"] is None:
                raise ConfigError("give both --resolution (256px, 768px) and --aspect_ratio (16:9, 9:16, 1:1, ...)")
            h, w = aspect_v2.get_image_size(opts["resolution"], opts["aspect_ratio"], training=False)
        elif opts["height"] is not None and opts["width"] is not None:
            h, w = int(opts["height"]), int(opts["width"])
        else:
            raise ConfigError("give sampling_option.resolution and aspect_ratio, or height and width")
        return aspect_v2.round_up_16(h), aspect_v2.round_up_16(w)

    def _data_path(self):
        cfg = self.cfg
        dataset = dict(cfg.dataset or {})
        if dataset.get("type", "text") != "text":
            raise ConfigError(f"dataset.type must be 'text' (prompts), got {dataset.get('type')!r}")
        return cfg.csv or dataset.get("data_path")

    def _rows(self) -> list[Row]:
        cfg = self.cfg
        path = self._data_path()
        if cfg.prompt:
            raw = [{"text": t, "ref": "", "name": "", "neg": ""} for t in cfg.prompt][cfg.start_index:cfg.end_index]
            self.fallback_name = "prompt"  # upstream writes the prompts to save_dir/prompt.csv
        elif path:
            raw = load_prompt_rows(path, cfg.start_index, cfg.end_index, columns=("ref", "name", "neg"))
            self.fallback_name = safe_file_name(os.path.splitext(os.path.basename(path))[0])
        else:
            raise ConfigError("no prompt given: use --prompt TEXT [TEXT ...] or --dataset.data-path FILE (.csv/.txt)")
        if not raw:
            raise ConfigError("the prompt list is empty (check the prompt file and --start-index/--end-index)")
        refs = [r["ref"] for r in raw]
        if cfg.ref:
            given = [str(v) for v in cfg.ref]
            if len(given) not in (1, len(raw)):
                raise ConfigError(f"--ref has {len(given)} entries for {len(raw)} prompts; give one, or one per prompt")
            refs = given * len(raw) if len(given) == 1 else given
        texts, refs, _ = extract_json_from_prompts([r["text"] for r in raw], refs, [""] * len(raw))
        neg = "" if cfg.neg_prompt is None else cfg.neg_prompt
        return [Row(cfg.start_index + j, j, texts[j], refs[j], r["name"], r["neg"] or neg) for j, r in enumerate(raw)]

    def _check_inputs(self) -> None:
        cfg = self.cfg
        if self.cond.needs_reference and not cfg.use_t2i2v:
            for row in self.rows:
                paths = split_references(row.ref)
                if not paths:
                    raise ConfigError(f"cond_type {self.cond.name} needs a reference for every prompt; prompt "
                                      f"{row.index} ({row.text[:40]!r}) has none: give --ref PATH or a 'ref' column")
                for p in paths:
                    check_reference_path(p)
        if self.num_frames > 1 and max(self.cond.head, self.cond.tail) > self.latent_frames:
            need = self.geometry.pixel_frames(max(self.cond.head, self.cond.tail))
            raise ConfigError(f"cond_type {self.cond.name} conditions {max(self.cond.head, self.cond.tail)} latent "
                              f"frames: generate at least {need} frames (got --num_frames {self.num_frames})")
        if cfg.use_t2i2v:
            for key in ("img_flux", "img_flux_ae"):
                if not cfg.get(key):
                    raise ConfigError(f"use_t2i2v needs an '{key}' section "
                                      "(see configs/opensora-v2/inference/t2i2v_*.yaml)")
            self.image_size = aspect_v2.get_image_size(cfg.img_resolution, self.opts["aspect_ratio"], training=True)
        if cfg.text_embed_folder and cfg.use_t2i2v:
            raise ConfigError("--text_embed_folder holds the video prompts' embeddings; text-to-image-to-video also "
                              "needs the prompts' own: run it in one process")
        if cfg.no_vae_decode and (self.cond.needs_reference or cfg.use_t2i2v):
            raise ConfigError("references and text-to-image-to-video need the VAE: the three-stage pipeline "
                              "(--no_vae_decode) is text-to-video only")
        kinds = ["model"] + ([] if cfg.text_embed_folder else ["t5", "clip"])
        kinds += [] if cfg.no_vae_decode and not self.cond.needs_reference else ["ae"]
        kinds += ["img_flux", "img_flux_ae"] if cfg.use_t2i2v else []
        for kind in kinds:
            if not cfg.get(kind):
                raise ConfigError(f"the config needs a '{kind}' section (see configs/opensora-v2/inference/)")
        check_weights(cfg, kinds)
        if cfg.text_embed_folder and not os.path.isdir(cfg.text_embed_folder):
            raise ConfigError(f"--text_embed_folder {cfg.text_embed_folder}: not a folder")
        if self.sp_size > 1:
            self._check_sequence_parallel()

    def _check_sequence_parallel(self) -> None:
        """sp_size > 1: each MMDiT's heads, text tokens and image tokens split into sp_size equal parts (the
        models refuse otherwise too, but only once they run)."""
        cfg, sp, p = self.cfg, self.sp_size, self.patch
        (h, w), t = self.latent_hw, self.latent_frames
        images = {"model": (t * (h // p) * (w // p), f"{t} latent frames x {h // p} x {w // p} patches",
                            "--num_frames, --resolution or --aspect_ratio", "the video model")}
        if cfg.use_t2i2v:
            ih, iw = self._image_latent_hw()
            images["img_flux"] = ((ih // p) * (iw // p), f"{ih // p} x {iw // p} patches",
                                  "--img_resolution or --aspect_ratio", "the text-to-image model")
        for kind, (tokens, shape, fix, what) in images.items():
            section = cfg.get(kind) or {}
            if section.get("type") != "flux":
                raise ConfigError(f"--sp_size {sp}: {kind} type {section.get('type')!r} has no sequence parallel "
                                  "path (the MMDiT, type flux, has)")
            heads = section.get("num_heads")
            if heads is not None and int(heads) % sp:
                raise ConfigError(f"--sp_size {sp}: each rank attends with an equal share of the heads, but "
                                  f"{kind}.num_heads ({heads}) is not divisible by {sp}")
            if tokens % sp:
                raise ConfigError(f"--sp_size {sp}: {what}'s {tokens} image tokens ({shape}) do not split into "
                                  f"{sp} equal parts; choose another {fix} (or sp_size)")
        if not cfg.text_embed_folder:  # (cached embeddings: checked when read)
            self._check_text_tokens(int((cfg.t5 or {}).get("max_length", 0)), "t5.max_length")

    def _check_text_tokens(self, tokens: int, what: str) -> None:
        if self.sp_size > 1 and tokens % self.sp_size:
            raise ConfigError(f"--sp_size {self.sp_size}: the {tokens} text tokens ({what}) do not split into "
                              f"{self.sp_size} equal parts; use a multiple of {self.sp_size}")

    # ------------------------------------------------------------------ batches and names
    def processed(self, row: Row) -> str:
        return add_suffixes(row.text, self.cfg.fps_save, self.motion)

    def save_path(self, row: Row, k: int, sub_dir: str) -> str:
        """Upstream's ``get_save_path_name``: ``{prefix}{name}`` or ``{prefix}{fallback}_{index:04d}``, ``_k``
        for k > 0; ``prompt_as_path``: ``{prompt}-{k}`` (the prompt made file-name safe). A name or prefix may
        name a subfolder (upstream joins them as paths) but must stay inside ``save_dir``."""
        cfg = self.cfg
        if cfg.prompt_as_path:
            name, what = f"{safe_file_name(row.text.strip('.'))}-{k}", "the prompt as a file name"
        else:
            name, what = (cfg.save_prefix + row.name, f"the name of prompt {row.index} (with --save-prefix)") \
                if row.name else (f"{cfg.save_prefix}{self.fallback_name}_{row.index:04d}", "--save-prefix")
            if k > 0:
                name += f"_{k}"
        return inside(cfg.save_dir, os.path.join(sub_dir, name), what)

    def image_path(self, row: Row, k: int) -> str:
        """Where text-to-image-to-video writes the generated first frame (without extension), as upstream."""
        return self.save_path(row, k, os.path.join(self.sub_dir, "generated_condition"))

    def _plan(self) -> list[SampleOutput]:
        """Every sample's files: the video (.mp4, or .png for one frame) with its prompt (.txt), the latent
        (save_latent, no_vae_decode), the t2i first frame with its prompt."""
        cfg = self.cfg
        video_ext = None if cfg.no_vae_decode else ".png" if self.num_frames == 1 else ".mp4"
        plan = []
        for k in range(cfg.num_sample):
            for row in self.rows:
                base = self.save_path(row, k, self.sub_dir)
                extra = () if cfg.no_vae_decode else (base + ".txt",)
                if cfg.use_t2i2v:
                    extra += (self.image_path(row, k) + ".png", self.image_path(row, k) + ".txt")
                files = sample_files(base, video_ext, cfg.save_latent or cfg.no_vae_decode, extra)
                plan.append(SampleOutput(row.index, k, base, files))
        return check_plan(plan, {row.index: row.text for row in self.rows}, cfg.num_sample)

    def batches(self) -> list[Batch]:
        """The samples to make (``todo``), in upstream's order: sample k, then prompt batches (finished samples
        left out of their batch; every sample's noise is its own, so the batch does not change it)."""
        cfg, out = self.cfg, []
        todo = {(s.index, s.k): s for s in self.todo}
        for k in range(cfg.num_sample):
            for s in range(0, len(self.rows), cfg.batch_size):
                rows = [r for r in self.rows[s:s + cfg.batch_size] if (r.index, k) in todo]
                if rows:
                    paths = [todo[(r.index, k)].base for r in rows]
                    out.append(Batch(rows, k, [self.processed(r) for r in rows], paths))
        return out

    def write_prompts(self, path: str) -> int:
        """Stage 1 of the three-stage pipeline: the suffixed prompts (one per line, in selection order) to
        ``path`` and their negatives to ``<path stem>.neg<ext>``."""
        lines = [self.processed(r) for r in self.rows]
        negs = [r.neg for r in self.rows]
        if any("\n" in line for line in lines + negs):
            raise ConfigError("prompts must be single lines")
        stem, ext = os.path.splitext(path)
        prepare_output_dir(os.path.dirname(os.path.abspath(path)), "--write-prompts")
        for target, content in ((path, lines), (f"{stem}.neg{ext}", negs)):
            write_text_atomically(target, "".join(line + "\n" for line in content))
        return len(lines)

    # ------------------------------------------------------------------ NaN/inf
    def _nonfinite(self, err: NonFiniteError, batch: Batch, what: str, guidance: str) -> NonFiniteError:
        """A sampler's error with the prompts and sample it concerns and the likely cause."""
        prompts = [batch.rows[r].index for r in err.rows if r < len(batch.rows)]
        return NonFiniteError(f"{what}: {err}: prompt(s) {prompts}, sample {batch.k}; likely cause: "
                              f"{nonfinite_cause(canonical(self.cfg.dtype), guidance)}", err.step, err.rows)

    def _check_finite(self, values: np.ndarray, batch: Batch, what: str, cause: str) -> None:
        """``values`` (one row per prompt of ``batch``, or several such blocks one after the other)."""
        rows = nonfinite_rows(values)
        if rows:
            prompts = sorted({batch.rows[r % len(batch.rows)].index for r in rows})
            raise NonFiniteError(f"{what} of prompt(s) {prompts}, sample {batch.k} holds NaN/inf; likely cause: "
                                 f"{cause}", rows=rows)

    # ------------------------------------------------------------------ stages
    def stages(self) -> list[tuple[str, tuple[str, ...], callable]]:
        """(name, models it uses, function of a batch), in order."""
        out = [("text", () if self.cfg.text_embed_folder else ("t5", "clip"), self.stage_text)]
        if self.cfg.use_t2i2v:
            out += [("image", ("img_flux",), self.stage_image),
                    ("image_decode", ("img_flux_ae",), self.stage_image_decode)]
        if self.cond.needs_reference:
            out.append(("references", ("ae",), self.stage_references))
        out.append(("sample", ("model",), self.stage_sample))
        out.append(("decode", () if self.cfg.no_vae_decode else ("ae",), self.stage_decode))
        return out

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """T5 (B, L, D) and CLIP pooled (B, V) of ``texts``, float32 on the host."""
        t5, clip = self.models.get("t5"), self.models.get("clip")
        txt, vec = t5(texts), clip(texts)
        return txt.astype(ms.float32).asnumpy(), vec.astype(ms.float32).asnumpy()

    def _cached(self, rows: list[Row], texts: list[str], folder: str) -> tuple[np.ndarray, np.ndarray]:
        txt, vec = [], []
        for row, text in zip(rows, texts):
            path = os.path.join(folder, f"{row.position:04d}.npz")
            entry = read_text_embedding(path)
            if entry["text"] != text:
                raise ConfigError(f"{path} holds the embedding of {entry['text']!r}, but this run's prompt "
                                  f"{row.position} is {text!r}; write the cache from the same prompts "
                                  "(run_sample_3stages.sh does)")
            if "pooled_emb" not in entry:
                raise ConfigError(f"{path} has no CLIP 'pooled_emb': write it with infer_t5.py --t5 ... --clip ... "
                                  "(an Open-Sora 2.0 text cache)")
            self._check_text_tokens(entry["text_emb"].shape[0], f"the length of the embeddings in {path}")
            txt.append(entry["text_emb"])
            vec.append(entry["pooled_emb"])
        return np.stack(txt), np.stack(vec)

    def stage_text(self, batch: Batch) -> None:
        negs = [r.neg for r in batch.rows]
        folder = self.cfg.text_embed_folder
        if folder:
            batch.data["txt"], batch.data["vec"] = self._cached(batch.rows, batch.texts, folder)
            batch.data["neg_txt"], batch.data["neg_vec"] = self._cached(batch.rows, negs, os.path.join(folder, "neg"))
            return
        n = len(batch.rows)
        texts = batch.texts + negs + ([r.text for r in batch.rows] if self.cfg.use_t2i2v else [])
        txt, vec = self._embed(texts)
        cause = f"the text encoders' weights, or float16 overflow (dtype {self.cfg.dtype})"
        self._check_finite(txt, batch, "the T5 embedding (prompt, negative prompt or t2i prompt)", cause)
        self._check_finite(vec, batch, "the CLIP embedding (prompt, negative prompt or t2i prompt)", cause)
        batch.data.update(txt=txt[:n], vec=vec[:n], neg_txt=txt[n:2 * n], neg_vec=vec[n:2 * n])
        if self.cfg.use_t2i2v:
            batch.data.update(img_txt=txt[2 * n:], img_vec=vec[2 * n:])

    def _text(self, txt: np.ndarray, vec: np.ndarray, latent_frames: int, h: int, w: int) -> dict:
        """The model's text and position inputs (upstream's ``prepare``), in the model dtype."""
        b = txt.shape[0]
        return dict(img_ids=ms.Tensor(flow_v2.image_ids(b, latent_frames, h, w, self.patch)).astype(self.dtype),
                    txt=ms.Tensor(txt).astype(self.dtype),
                    txt_ids=ms.Tensor(flow_v2.text_ids(b, txt.shape[1])).astype(self.dtype),
                    y_vec=ms.Tensor(vec).astype(self.dtype))

    def _schedule(self, latent_frames: int, h: int, w: int) -> list[float]:
        tokens = (h // self.patch) * (w // self.patch)
        return flow_v2.get_schedule(self.opts["num_steps"], tokens, latent_frames, self.opts["flow_shift"],
                                    self.opts["shift"])

    def stage_image(self, batch: Batch) -> None:
        """The t2i first frame: Flux-dev, distilled guidance, one latent frame at the image size."""
        flux = self.models.get("img_flux")
        h, w = self._image_latent_hw()
        channels = int(self.cfg.img_flux.get("in_channels", 64)) // self.patch ** 2
        noise = np.stack([seeded_noise(self.seed, r.index, batch.k, IMAGE_STREAM, (channels, 1, h, w))
                          for r in batch.rows])
        text = self._text(batch.data["img_txt"], batch.data["img_vec"], 1, h, w)
        img = flow_v2.pack(ms.Tensor(noise).astype(self.dtype), self.patch)
        try:
            x = flow_v2.DistilledDenoiser(T2I_GUIDANCE).denoise(flux, img, self._schedule(1, h, w), text,
                                                                dtype=self.dtype,
                                                                progress_bar=self._step_progress("first frame"))
        except NonFiniteError as err:
            raise self._nonfinite(err, batch, "the text-to-image first frame (Flux)",
                                  f"Flux guidance {T2I_GUIDANCE}") from None
        batch.data["image_latent"] = flow_v2.unpack(x, 1, h, w, self.patch).astype(ms.float32).asnumpy()

    def _image_latent_hw(self) -> tuple[int, int]:
        """The t2i first frame's latent size: upstream's noise is patch_size * ceil(H / 16) high."""
        ih, iw = self.image_size
        return 2 * -(-ih // 16), 2 * -(-iw // 16)

    def stage_image_decode(self, batch: Batch) -> None:
        ae = self.models.get("img_flux_ae")
        images = ae.decode(ms.Tensor(batch.data.pop("image_latent")).astype(self.dtype))
        images = images.astype(ms.float32).asnumpy()[:, :, :1]
        self._check_finite(images, batch, "the first frame the Flux AE decoded (finite latents)",
                           f"the Flux AE's weights, or float16 overflow (dtype {self.cfg.dtype})")
        refs = []
        for row, image in zip(batch.rows, images):
            if self.writes:
                path = save_sample(image, self.image_path(row, batch.k), self.cfg.fps_save)
                self._write_text(path, row.text)
            else:  # the frame conditions the video as read back from its PNG: this rank reads a private copy
                path = save_sample(image, os.path.join(self._scratch(), f"{row.index}_{batch.k}"), self.cfg.fps_save)
            refs.append(path)
        batch.data["refs"] = refs

    def _scratch(self) -> str:
        """A folder of this process's own (removed at the end of :meth:`run`)."""
        if self._scratch_dir is None:
            self._scratch_dir = tempfile.TemporaryDirectory(prefix="opensora_rank_")
        return self._scratch_dir.name

    def stage_references(self, batch: Batch) -> None:
        """Each reference clip encoded alone; the posterior draw (upstream samples it) seeded per sample."""
        vae = self.models.get("ae")
        refs = batch.data.get("refs") or [r.ref for r in batch.rows]
        latents = []
        for row, ref in zip(batch.rows, refs):
            clips = reference_clips(self.cond, split_references(ref), self._read)
            encoded = []
            for i, clip in enumerate(clips):
                shape = (1, self.geometry.channels, *self.geometry.latent_size(clip.shape[1:]))
                noise = seeded_noise(self.seed, row.index, batch.k, REFERENCE_STREAM + i, shape)
                z = vae.encode(ms.Tensor(clip[None]).astype(self.dtype), noise=noise)
                encoded.append(z.astype(ms.float32).asnumpy()[0])
            latents.append(encoded)
        batch.data["ref_latents"] = latents

    def _read(self, path: str) -> np.ndarray:
        return read_reference(path, (self.height, self.width))

    def stage_sample(self, batch: Batch) -> None:
        model = self.models.get("model")
        b, t, (h, w) = len(batch.rows), self.latent_frames, self.latent_hw
        shape = (self.channels, t, h, w)
        noise = np.stack([seeded_noise(self.seed, r.index, batch.k, VIDEO_STREAM, shape) for r in batch.rows])
        refs = batch.data.get("ref_latents", [[] for _ in batch.rows])
        masks, masked = inference_condition(self.cond, noise.shape, refs)
        d = batch.data
        text = self._text(np.concatenate([d["txt"], d["neg_txt"], d["neg_txt"]]),
                          np.concatenate([d["vec"], d["neg_vec"], d["neg_vec"]]), t, h, w)
        o = self.opts
        denoiser = flow_v2.I2VDenoiser(o["guidance"], o["guidance_img"], o["text_osci"], o["image_osci"],
                                       o["scale_temporal_osci"])
        cond = flow_v2.pack(ms.Tensor(np.concatenate([masks, masked], axis=1)).astype(self.dtype), self.patch)
        t0 = time.perf_counter()
        try:
            x = denoiser.denoise(model, flow_v2.pack(ms.Tensor(noise).astype(self.dtype), self.patch),
                                 self._schedule(t, h, w), text, cond, t, image_ramp=self.cond.is_i2v, dtype=self.dtype,
                                 progress_bar=self._step_progress("sampling"))
        except NonFiniteError as err:
            raise self._nonfinite(err, batch, "the video model",
                                  f"guidance {o['guidance']}, guidance_img {o['guidance_img']}") from None
        latent = flow_v2.unpack(x, t, h, w, self.patch).astype(ms.float32).asnumpy()
        self.stats["sample_s"].append(time.perf_counter() - t0)
        if self.cond.is_i2v and t > 1:  # the image frames themselves, in every sample (upstream: item 0 only)
            for j, ref in enumerate(refs):
                if self.cond.head:
                    latent[j, :, :1] = ref[0][:, :1]
                if self.cond.tail:
                    latent[j, :, -1:] = ref[-1][:, -1:]
        batch.data["latent"] = latent

    def stage_decode(self, batch: Batch) -> None:
        latent = batch.data.pop("latent")
        cfg = self.cfg
        if not self.writes:  # another rank decodes and writes this batch
            return
        if cfg.save_latent or cfg.no_vae_decode:
            for path, z in zip(batch.paths, latent):
                save_latent(z, latent_file(path), self.num_frames, cfg.fps_save)
        if cfg.no_vae_decode:
            return
        self._report("decoding", 0, 1)
        t0 = time.perf_counter()
        video = self.models.get("ae").decode(ms.Tensor(latent).astype(self.dtype), num_frames=self.num_frames)
        video = video.astype(ms.float32).asnumpy()[:, :, :self.num_frames]
        self._check_finite(video, batch, "the video the VAE decoded (finite latents)",
                           f"the VAE's weights, or float16 overflow (dtype {cfg.dtype})")
        self.stats["decode_s"].append(time.perf_counter() - t0)
        self._report("decoding", 1, 1)
        for path, text, sample in zip(batch.paths, batch.texts, video):
            saved = save_sample(sample, path, cfg.fps_save)
            self._write_text(saved, text)
            batch.data.setdefault("saved", []).append(saved)
            if cfg.verbose >= 1:
                print(f"Saved to {saved}", flush=True)

    @staticmethod
    def _write_text(sample_path: str, text: str) -> None:
        """The prompt next to the sample (upstream writes ``<name>.txt``), atomically."""
        write_text_atomically(os.path.splitext(sample_path)[0] + ".txt", text)

    # ------------------------------------------------------------------ sharing models, progress
    # what the models depend on: a request that changes one of these needs another load
    MODEL_KEYS = ("model", "ae", "t5", "clip", "img_flux", "img_flux_ae", "ckpt_path", "dtype", "random_weights_dir",
                  "text_embed_folder", "device_target", "mode", "jit_level")

    def share_models(self, models: Models) -> "PipelineV2":
        """Use models another pipeline built (the web app builds them once; each request is a new pipeline)."""
        check_models_match(self.MODEL_KEYS, self.cfg, models.cfg)
        self.models = models
        return self

    # ------------------------------------------------------------------ running
    def run(self) -> list[str]:
        """Make every sample of ``todo``; -> the videos written (the latents with ``no_vae_decode``). The
        policy is applied again (the output folder may have changed since the pipeline was built)."""
        if self.sp_size > 1:  # before any model: the msrun ranks form the group; rank 0 writes
            self.writes = sampling_rank_writes(self.sp_size)
        self.todo = apply_existing_policy(self.plan, self.cfg.overwrite, skip_existing_of(self.cfg))
        batches = self.batches()
        stages = self.stages()
        try:
            if self.cfg.offload:  # stage by stage over every batch; a stage's models go before the next stage
                for name, kinds, fn in stages:
                    self._timed(name, lambda: [fn(b) for b in batches])
                    self.models.release(*kinds)  # (the VAE is built again for decoding: it is small)
            else:  # batch by batch, models kept (upstream's order)
                for batch in self._progress(batches):
                    for name, _, fn in stages:
                        self._timed(name, lambda: fn(batch))
        finally:
            if self._scratch_dir is not None:
                self._scratch_dir.cleanup()
                self._scratch_dir = None
        if not self.writes:
            return []
        missing = [f for s in self.todo for f in s.files if not os.path.isfile(f)]
        if missing:
            raise RunError(f"{len(missing)} planned output file(s) were not written: {missing[:5]}")
        if self.cfg.no_vae_decode:
            return [latent_file(p) for b in batches for p in b.paths]
        return [p for b in batches for p in b.data.get("saved", [])]

    def _timed(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        self.stats["stages_s"][name] = self.stats["stages_s"].get(name, 0.0) + time.perf_counter() - t0

    def _progress(self, batches):
        if self.cfg.verbose < 1 or not self.writes:
            return batches
        from tqdm import tqdm

        return tqdm(batches, desc="batches", unit="batch")
