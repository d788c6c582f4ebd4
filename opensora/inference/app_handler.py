"""The web app's request handler: a form -> the flags of ``scripts/inference.py`` -> a video.

The models are loaded once (:meth:`AppHandler.load`); each request becomes the command line that
reproduces it (``python scripts/inference.py --config ... --prompt=... --seed ...``), is parsed and checked
by the same code as that command (the same errors, the same output names and overwrite rules) and runs
through the same pipeline with the loaded models, so the app and the command line write the same video:
:class:`AppHandlerV1` for 1.x configs (``InferencePipeline``), ``AppHandlerV2`` (``v2/app_handler.py``) for
2.0's (``PipelineV2``); :func:`handler_for` picks by the config. Requests run one at a time (a lock; the page
queues them); :meth:`AppHandler.cancel` stops the running one after its current sampling step and the files
it had started are removed. No Gradio here (``opensora/app/ui.py`` draws the page).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shlex
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from ..config import ConfigError
from ..datasets.aspect import aspect_ratio_map, resolutions
from .options import inference_schema

logger = logging.getLogger(__name__)

SCRIPT = "scripts/inference.py"
TEXT_TO_VIDEO, TEXT_TO_IMAGE = "text-to-video", "text-to-image"
IMAGE_TO_VIDEO, FRAMES_TO_VIDEO, EXTEND_VIDEO = "image-to-video", "start and end frames", "extend a video"
TASKS = (TEXT_TO_VIDEO, TEXT_TO_IMAGE, IMAGE_TO_VIDEO, FRAMES_TO_VIDEO, EXTEND_VIDEO)
# the uploads each task reads: "start" / "end" frame images, "video"
UPLOADS = {IMAGE_TO_VIDEO: ("start",), FRAMES_TO_VIDEO: ("start", "end"), EXTEND_VIDEO: ("video",)}
DURATIONS = ("2s", "4s", "8s", "16s")
CAMERA_MOTIONS = ("pan right", "pan left", "tilt up", "tilt down", "zoom in", "zoom out", "static")
NAME_PREFIX = "app-"
SEED_MAX = 2**31 - 1
REFERENCES = "references"  # the uploads' folder inside save_dir


class Cancelled(Exception):
    """The user pressed Cancel: the run stopped after a sampling step; the files it had started are removed."""


@dataclass
class Form:
    """One request as the page sends it. ``None`` keeps the config's value (``seed``: a random one)."""

    prompt: str
    task: str | None = None  # 1.x: one of TASKS; 2.0: a cond_type, or "t2i2v"; None: the first (the config's)
    neg_prompt: str | None = None
    start_image: str | None = None  # image-to-video, start and end frames
    end_image: str | None = None
    video: str | None = None  # extend a video
    resolution: str | None = None
    aspect_ratio: str | None = None
    duration: str | None = None  # "4s" or a frame count (2.0: frames, 4k+1)
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    aes: float | None = None  # 1.2's scores (None: not appended)
    flow: float | None = None
    camera_motion: str | None = None
    image_guidance: float | None = None  # 2.0's guidance_img
    motion_score: str | None = None  # 2.0's motion score ("none": not appended; None: the config's)
    name: str | None = None  # the output name; None: the next free app-NNNN
    overwrite: bool = False


@dataclass
class Capabilities:
    """Which controls apply to the loaded config, and its values (the page's defaults)."""

    tasks: tuple[str, ...]
    any_size: bool  # STDiT 1.0 is built for one size
    scores: bool  # 1.2 was trained with aesthetic / motion / camera-motion suffixes
    image_size: tuple[int, int] | None
    resolution: str | None
    aspect_ratio: str | None
    num_frames: int
    steps: int
    guidance: float
    aes: float | None
    resolutions: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ()
    version: int = 1
    durations: tuple[str, ...] = DURATIONS  # the duration control's choices besides the config's
    uploads: dict = field(default_factory=lambda: dict(UPLOADS))
    image_guidance: float | None = None  # 2.0
    motion_score: str | None = None  # 2.0 (None: no suffix)


def capabilities_of(cfg) -> Capabilities:
    model_type = str(cfg.model.get("type", ""))
    frame_conditioning = not model_type.startswith("STDiT-") and cfg.scheduler.get("type") != "dpm-solver"
    tasks = TASKS if frame_conditioning else (TEXT_TO_VIDEO, TEXT_TO_IMAGE)
    image_size = tuple(cfg.image_size) if cfg.image_size and None not in cfg.image_size else None
    return Capabilities(
        tasks=tasks, any_size=not model_type.startswith("STDiT-"), scores=model_type.startswith("STDiT3"),
        image_size=image_size, resolution=cfg.resolution, aspect_ratio=cfg.aspect_ratio,
        num_frames=int(cfg.num_frames),
        steps=int(cfg.num_sampling_steps or cfg.scheduler.get("num_sampling_steps") or 0),
        guidance=float(cfg.cfg_scale if cfg.cfg_scale is not None else cfg.scheduler.get("cfg_scale", 0.0)),
        aes=cfg.aes, resolutions=tuple(resolutions()), aspect_ratios=tuple(aspect_ratio_map()))


@dataclass
class Result:
    path: str  # the video (.mp4) or image (.png)
    command: str
    seconds: float


class AppHandler:
    """Loads the models of ``base_argv`` (``--config FILE`` and overrides) once and serves requests. What
    depends on the Open-Sora version is a subclass's: parsing, the version's flags, loading, the pipeline."""

    version = 0

    def __init__(self, base_argv: list[str]):
        self.base_argv = list(base_argv)
        self.base = self.parse(self.base_argv)  # a bad config fails at start, as the script does
        self.capabilities = self.capabilities_of(self.base)
        self.loaded = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._owner = None

    # ------------------------------------------------------------------ what a version defines
    def parse(self, argv: list[str]):
        raise NotImplementedError

    def capabilities_of(self, cfg) -> Capabilities:
        raise NotImplementedError

    def version_args(self, form: Form) -> list[str]:
        """The form's flags after the prompts and references, before the seed (sizes, frames, steps, ...)."""
        raise NotImplementedError

    def seed_args(self, seed: int) -> list[str]:
        return ["--seed", str(seed)]

    def reference_args(self, refs: list[str], form: Form) -> list[str]:
        raise NotImplementedError

    def name_args(self, name: str) -> list[str]:
        raise NotImplementedError

    def load(self):
        raise NotImplementedError

    def pipeline(self, cfg):
        """A pipeline for one request (every check of the command line, outputs included) on the loaded models."""
        raise NotImplementedError

    @staticmethod
    def planned_files(pipeline) -> list[str]:
        raise NotImplementedError

    # ------------------------------------------------------------------ the command line
    def request_args(self, form: Form) -> list[str]:
        """The flags that, after ``base_argv``, make ``scripts/inference.py`` do what the form asks."""
        caps, base = self.capabilities, self.base
        if form.task is None:
            form = replace(form, task=caps.tasks[0])
        if form.task not in caps.tasks:
            raise ConfigError(f"task {form.task!r} is not available with {base.model['type']} "
                              f"(available: {', '.join(caps.tasks)})")
        if not (form.prompt or "").strip():
            raise ConfigError("the prompt is empty: describe the video to generate")
        args = [f"--prompt={form.prompt.strip()}"]
        if form.neg_prompt and form.neg_prompt.strip():
            args.append(f"--neg-prompt={form.neg_prompt.strip()}")
        uploads = {"start": (form.start_image, "a start frame: upload an image"),
                   "end": (form.end_image, "an end frame: upload an image"),
                   "video": (form.video, "a video to extend: upload one")}
        needed = caps.uploads.get(form.task, ())
        if needed:
            refs = [self.keep_upload(_need(uploads[kind][0], f"{form.task} needs {uploads[kind][1]}"))
                    for kind in needed]
            args += self.reference_args(refs, form)
        args += self.version_args(form)
        args += self.seed_args(form.seed if form.seed is not None else secrets.randbelow(SEED_MAX))
        args += self.name_args(form.name.strip() if form.name and form.name.strip() else self.next_name())
        if form.overwrite:
            args += ["--overwrite", "true"]
        return args

    def keep_upload(self, path: str) -> str:
        """Copy an upload (the page's temporary file) into ``save_dir/references/`` under its content hash, so
        that the command line shown keeps working. ';' cannot be in it (it separates references)."""
        with open(path, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()[:12]
        ext = re.sub(r"[^A-Za-z0-9.]", "", os.path.splitext(path)[1].lower())
        folder = os.path.join(self.base.save_dir, REFERENCES)
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, digest + ext)
        if not os.path.exists(target):
            shutil.copyfile(path, target)
        return os.path.normpath(target)

    def next_name(self) -> str:
        """``app-NNNN``: one more than the highest number in the output folder and its subfolders (2.0 writes
        into ``video_<resolution>/``)."""
        pattern = re.compile(rf"^{re.escape(NAME_PREFIX)}(\d+)")
        folder = self.base.save_dir
        names = []
        for entry in (os.scandir(folder) if os.path.isdir(folder) else []):
            names.append(entry.name)
            if entry.is_dir() and entry.name != REFERENCES:
                names += os.listdir(entry.path)
        numbers = [int(m.group(1)) for m in map(pattern.match, names) if m]
        return f"{NAME_PREFIX}{max(numbers, default=0) + 1:04d}"

    def command(self, args: list[str]) -> str:
        return shlex.join(["python", SCRIPT, *self.base_argv, *args])

    # ------------------------------------------------------------------ running
    def generate(self, form: Form, progress: Callable[[float, str], None] | None = None, owner=None) -> Result:
        """Run one request -> the file written. Raises InputError (bad input: nothing ran), RunError, or
        :class:`Cancelled`. ``progress(fraction, text)`` is called after every sampling step and around decoding."""
        from ..runtime import set_seed

        with self._lock:  # one request at a time: the models are shared (and the next free name is this one's)
            self._cancel.clear()
            self._owner = owner
            try:
                t0 = time.perf_counter()
                args = self.request_args(form)
                cfg = self.parse(self.base_argv + args)
                pipeline = self.pipeline(cfg)
                planned = self.planned_files(pipeline)
                existed = {path for path in planned if os.path.exists(path)}
                pipeline.on_progress = _Progress(cfg.get("loop") or 1, progress, self._cancel,
                                                 first_frame=bool(cfg.get("use_t2i2v")))
                set_seed(cfg.seed)  # as the script's runtime set-up does
                try:
                    saved = pipeline.run()
                except Cancelled:  # files written before the stop (2.0's t2i first frame) go too
                    for path in set(planned) - existed:
                        if os.path.exists(path):
                            os.remove(path)
                    raise
            finally:
                self._owner = None
        media = [p for p in saved if p.endswith((".mp4", ".png"))]
        return Result(media[0], self.command(args), time.perf_counter() - t0)

    def cancel(self, owner=None) -> bool:
        """Stop the running request after its current step (only the owner's, if given) -> whether one runs."""
        if not self._lock.locked() or (owner is not None and self._owner not in (None, owner)):
            return False
        self._cancel.set()
        return True


class AppHandlerV1(AppHandler):
    """Open-Sora 1.0 / 1.1 / 1.2 configs: ``InferencePipeline``."""

    version = 1

    def parse(self, argv):
        return inference_schema().parse(argv)

    def capabilities_of(self, cfg) -> Capabilities:
        return capabilities_of(cfg)

    def reference_args(self, refs: list[str], form: Form) -> list[str]:
        if form.task == FRAMES_TO_VIDEO:
            strategy = "0;0,1,0,-1,1"  # reference 0 at the first latent frame, reference 1 at the last
        elif form.task == EXTEND_VIDEO:
            n = self.base.condition_frame_length  # the last n frames of the video start the new one
            strategy = f"0,0,-{n},0,{n}"
        else:
            strategy = "0"
        return ["--reference-path", ";".join(refs), "--mask-strategy", strategy]

    def version_args(self, form: Form) -> list[str]:
        caps, base, args = self.capabilities, self.base, []
        if form.resolution or form.aspect_ratio:
            if not caps.any_size:
                raise ConfigError(f"{base.model['type']} generates the size it was built for only; "
                                  "leave resolution and aspect ratio at the config's")
            args += ["--image-size", "null", "--resolution", str(form.resolution or base.resolution),
                     "--aspect-ratio", str(form.aspect_ratio or base.aspect_ratio)]
        if form.task == TEXT_TO_IMAGE:
            args += ["--num-frames", "1"]
        elif form.duration is not None and str(form.duration).strip():
            args += ["--num-frames", str(form.duration).strip()]
        if form.steps is not None:
            args += ["--num-sampling-steps", str(form.steps)]
        if form.guidance is not None:
            args += ["--cfg-scale", str(form.guidance)]
        if caps.scores:
            args += _score_args(base, form)
        return args

    def name_args(self, name: str) -> list[str]:
        return ["--sample-name", name]

    def load(self):
        """Build the models once (from the base configuration; the runtime as the script sets it)."""
        from ..runtime import init_runtime_from
        from .pipeline import InferencePipeline

        cfg = self.parse(self.base_argv + ["--prompt=loading"])
        init_runtime_from(cfg, seed=cfg.seed)
        self.loaded = InferencePipeline(cfg, outputs=False).load()
        return self

    def pipeline(self, cfg):
        from .pipeline import InferencePipeline

        return InferencePipeline(cfg).share_models(self.loaded)

    @staticmethod
    def planned_files(pipeline) -> list[str]:
        return [path for sample in pipeline.request.todo for path in sample.files]


def handler_for(base_argv: list[str]) -> AppHandler:
    """The handler of the config's Open-Sora version (2.0: a config with a ``sampling_option`` section)."""
    from .v2.options import is_v2_config

    if is_v2_config(base_argv):
        from .v2.app_handler import AppHandlerV2

        return AppHandlerV2(base_argv)
    return AppHandlerV1(base_argv)


class _Progress:
    """Pipeline events -> (fraction, text); raises :class:`Cancelled` at the first event after Cancel.
    ``first_frame``: 2.0's text-to-image-to-video, whose first frame's steps take the first fifth."""

    def __init__(self, loops: int, report, cancel: threading.Event, first_frame: bool = False):
        self.loops, self.report, self.cancel, self.clip = loops, report, cancel, 0
        self.lead = 0.2 if first_frame else 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"cancelled during {stage} ({done}/{total}); nothing was written")
        clip = f" (clip {self.clip + 1}/{self.loops})" if self.loops > 1 else ""
        if stage == "first frame":
            fraction, text = self.lead * done / total, f"first frame step {done}/{total}"
        elif stage == "sampling":
            fraction, text = (self.clip + 0.9 * done / total) / self.loops, f"sampling step {done}/{total}{clip}"
        elif done == 0:
            fraction, text = (self.clip + 0.9) / self.loops, f"decoding{clip}"
        else:
            self.clip += 1
            fraction, text = self.clip / self.loops, f"decoded{clip}"
        if stage != "first frame":
            fraction = self.lead + (1 - self.lead) * fraction
        if self.report is not None:
            self.report(min(fraction, 1.0), text)


def _need(path: str | None, message: str) -> str:
    if not path:
        raise ConfigError(message)
    return path


def _score_args(base, form: Form) -> list[str]:
    """1.2's prompt suffixes: each given explicitly when it differs from the config's."""
    args = []
    for flag, value, current in (("--aes", form.aes, base.aes), ("--flow", form.flow, base.flow),
                                 ("--camera-motion", form.camera_motion or None, base.camera_motion)):
        if value != current:
            args += [flag, "null" if value is None else str(value)]
    return args
