"""The diffusion training loss of one batch, as a Cell around the model (what the train step differentiates).

The math is the schedulers' own ``training_losses`` (sampler teammate's code, shared with sampling):
IDDPM with learned sigma for Open-Sora 1.0/1.1 (MSE on epsilon + the VLB term with the mean frozen),
rectified flow for 1.2. All randomness (timesteps, noise, frame masks, caption dropout) is drawn on the
host by :class:`StepInputs` and passed in, so that a resumed run repeats exactly, ranks are
independent, and the compiled graph holds no random ops.

Inputs, in this order (:data:`INPUT_NAMES`): x0 (B, C, T, H, W) latents; noise (same shape);
t (B,) timesteps (int32 for IDDPM, float32 for rflow); x_mask (B, T) bool, True = generated frame;
y (B, L, D) caption features; y_mask (B, L) int; force_drop_ids (B,) int32 (1 = null caption);
fps, height, width, num_frames, ar (B,) float32. Only the arguments the model's ``construct`` takes
are passed to it (STDiT: y/mask; STDiT2: + x_mask, num_frames, height, width, ar, fps; STDiT3: + x_mask,
fps, height, width).
"""
from __future__ import annotations

import inspect

import numpy as np

import mindspore as ms
from mindspore import nn

INPUT_NAMES = ("x0", "noise", "t", "x_mask", "y", "y_mask", "force_drop_ids", "fps", "height", "width",
               "num_frames", "ar")


def model_arguments(model: nn.Cell) -> set:
    return set(inspect.signature(model.construct).parameters)


class DiffusionLoss(nn.Cell):
    """Mean over the batch of ``scheduler.training_losses(model, ...)["loss"]``."""

    def __init__(self, model: nn.Cell, scheduler, use_frame_mask: bool = True):
        super().__init__(auto_prefix=False)
        self.model = model
        self.scheduler = scheduler
        accepted = model_arguments(model)
        self.pass_x_mask = use_frame_mask and "x_mask" in accepted
        self.use_frame_mask = use_frame_mask
        self.pass_drop = "force_drop_ids" in accepted
        self.pass_fps = "fps" in accepted
        self.pass_hw = "height" in accepted
        self.pass_frames = "num_frames" in accepted
        self.pass_ar = "ar" in accepted

    def construct(self, x0, noise, t, x_mask, y, y_mask, force_drop_ids, fps, height, width, num_frames, ar):
        b = y.shape[0]
        kwargs = {"y": y.reshape((b, 1, y.shape[1], y.shape[2])), "mask": y_mask}
        if self.pass_x_mask:
            kwargs["x_mask"] = x_mask
        if self.pass_drop:
            kwargs["force_drop_ids"] = force_drop_ids
        if self.pass_fps:
            kwargs["fps"] = fps
        if self.pass_hw:
            kwargs["height"] = height
            kwargs["width"] = width
        if self.pass_frames:
            kwargs["num_frames"] = num_frames
        if self.pass_ar:
            kwargs["ar"] = ar
        frame_mask = x_mask if self.use_frame_mask else None
        terms = self.scheduler.training_losses(self.model, x0, kwargs, noise=noise, mask=frame_mask, t=t)
        return terms["loss"].astype(ms.float32).mean()


class StepInputs:
    """Host-side randomness of a step: timesteps, noise, frame masks, caption dropout (NumPy)."""

    def __init__(self, scheduler, mask_generator=None, class_dropout_prob: float = 0.0):
        self.scheduler = scheduler
        self.mask_generator = mask_generator
        self.class_dropout_prob = float(class_dropout_prob)
        self.is_rflow = hasattr(scheduler, "sample_t")

    def timesteps(self, batch: dict, rng: np.random.Generator) -> np.ndarray:
        b = batch["x0"].shape[0]
        if self.is_rflow:
            kwargs = {"height": batch["height"], "width": batch["width"], "num_frames": batch["num_frames"]}
            return self.scheduler.sample_t(b, rng, kwargs).astype(np.float32)
        return rng.integers(0, self.scheduler.num_timesteps, size=b).astype(np.int32)

    def __call__(self, batch: dict, rng: np.random.Generator) -> tuple:
        """``batch`` holds x0 (latents) and the dataset's arrays -> the loss Cell's inputs, in order."""
        x0 = batch["x0"].astype(np.float32)
        b, t_lat = x0.shape[0], x0.shape[2]
        t = self.timesteps(batch, rng)
        noise = rng.standard_normal(x0.shape).astype(np.float32)
        if self.mask_generator is not None:
            x_mask = self.mask_generator.get_masks(b, t_lat, rng)
        else:
            x_mask = np.ones((b, t_lat), dtype=bool)
        drop = (rng.random(b) < self.class_dropout_prob).astype(np.int32)
        values = {"x0": x0, "noise": noise, "t": t, "x_mask": x_mask, "y": batch["text_emb"].astype(np.float32),
                  "y_mask": batch["text_mask"].astype(np.int32), "force_drop_ids": drop}
        for key in ("fps", "height", "width", "num_frames", "ar"):
            values[key] = batch[key].astype(np.float32)
        return tuple(ms.Tensor(values[name]) for name in INPUT_NAMES)
