"""The web app's request handler for Open-Sora 2.0 configs: the form -> ``scripts/inference.py``'s 2.0 flags
(``--cond_type``, ``--ref``, ``--resolution``, ``--aspect_ratio``, ``--num_frames``, ``--num_steps``,
``--guidance``, ``--guidance_img``, ``--motion_score``, ``--seed``, ``--save_prefix``) -> :class:`PipelineV2`
on models built once. The shared part (the command line, uploads, names, the lock, Cancel, progress) is
:class:`~opensora.inference.app_handler.AppHandler`'s.
"""
from __future__ import annotations

from ...datasets import aspect_v2
from ..app_handler import AppHandler, Capabilities, Form
from .conditions import COND_TYPES
from .options import parse_v2

T2I2V = "t2i2v"  # text-to-image-to-video: the config's Flux makes the first frame (--use_t2i2v true)
FRAMES = ("1", "33", "65", "97", "129")  # 4k+1 (1: an image), besides the config's
RESOLUTIONS = ("256px", "768px")
FLUX_SECTIONS = ("img_flux", "img_flux_ae")


def uploads_of(cond) -> tuple[str, ...]:
    """The uploads a cond_type reads (conditions.py): a video for v2v, else the start and/or end image."""
    if cond.video_frames:
        return ("video",)
    return ("start",) * bool(cond.head) + ("end",) * bool(cond.tail)


class AppHandlerV2(AppHandler):
    """Open-Sora 2.0 configs (a ``sampling_option`` section)."""

    version = 2

    def parse(self, argv):
        return parse_v2(argv)

    def capabilities_of(self, cfg) -> Capabilities:
        o = cfg.sampling
        flux = all(cfg.get(key) for key in FLUX_SECTIONS)
        tasks = (cfg.cond_type,) + tuple(c for c in COND_TYPES if c != cfg.cond_type) + ((T2I2V,) if flux else ())
        if cfg.use_t2i2v:  # the config's own task first (the page's default)
            tasks = (T2I2V,) + tasks[:-1]
        uploads = {name: uploads_of(cond) for name, cond in COND_TYPES.items() if cond.needs_reference}
        resolutions = tuple(dict.fromkeys([o["resolution"]] * bool(o["resolution"]) + list(RESOLUTIONS)))
        return Capabilities(
            tasks=tasks, any_size=True, scores=False, image_size=None if o["resolution"] else (o["height"], o["width"]),
            resolution=o["resolution"], aspect_ratio=o["aspect_ratio"], num_frames=int(o["num_frames"]),
            steps=int(o["num_steps"]), guidance=float(o["guidance"]), aes=None, resolutions=resolutions,
            aspect_ratios=tuple(aspect_v2.aspect_ratio_sizes(RESOLUTIONS[0])), version=2, durations=FRAMES,
            uploads=uploads, image_guidance=o["guidance_img"],
            motion_score=None if cfg.motion_score is None else str(cfg.motion_score))

    def reference_args(self, refs: list[str], form: Form) -> list[str]:
        return ["--ref", ";".join(refs)]  # i2v_loop: "start;end"

    def version_args(self, form: Form) -> list[str]:
        base, caps = self.base, self.capabilities
        if form.task == T2I2V:
            args = ([] if base.use_t2i2v else ["--use_t2i2v", "true"]) + \
                (["--cond_type", "t2v"] if base.cond_type != "t2v" else [])
        else:
            args = (["--use_t2i2v", "false"] if base.use_t2i2v else []) + \
                (["--cond_type", form.task] if form.task != base.cond_type else [])
        if form.resolution or form.aspect_ratio:
            args += ["--resolution", str(form.resolution or caps.resolution),
                     "--aspect_ratio", str(form.aspect_ratio or caps.aspect_ratio)]
        for flag, value in (("--num_frames", form.duration), ("--num_steps", form.steps),
                            ("--guidance", form.guidance), ("--guidance_img", form.image_guidance)):
            if value is not None and str(value).strip():
                args += [flag, str(value).strip()]
        if form.motion_score is not None and form.motion_score != caps.motion_score:
            args += ["--motion_score", "null" if form.motion_score == "none" else str(form.motion_score)]
        return args

    def seed_args(self, seed: int) -> list[str]:
        # the top-level seed is the noise seed only when the config leaves sampling_option.seed null
        flag = "--seed" if self.base.sampling["seed"] is None else "--sampling_option.seed"
        return [flag, str(seed)]

    def name_args(self, name: str) -> list[str]:
        return ["--save_prefix", f"{name}_"]  # -> video_<res>/<name>_prompt_0000.mp4

    def load(self):
        """Build every model a request may use once (Flux and its AE too when the config has them)."""
        from ...runtime import init_runtime_from
        from .components import check_weights
        from .pipeline import PipelineV2

        cfg = self.parse(self.base_argv + ["--prompt=loading"])
        init_runtime_from(cfg, seed=cfg.seed)
        loader = PipelineV2(cfg, outputs=False)  # every check of the configuration
        kinds = [kind for _, used, _ in loader.stages() for kind in used] + ["ae"]
        if T2I2V in self.capabilities.tasks:
            check_weights(cfg, FLUX_SECTIONS)
            kinds += FLUX_SECTIONS
        for kind in dict.fromkeys(kinds):
            loader.models.get(kind)
        self.loaded = loader.models
        return self

    def pipeline(self, cfg):
        from .pipeline import PipelineV2

        return PipelineV2(cfg).share_models(self.loaded)

    @staticmethod
    def planned_files(pipeline) -> list[str]:
        return [path for sample in pipeline.todo for path in sample.files]
