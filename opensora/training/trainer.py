"""The training loop: data -> (VAE) latents -> host randomness -> compiled step -> logs -> checkpoints.

Built by ``scripts/train.py`` from the configuration; usable directly from Python (tests, benchmarks).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

import mindspore as ms
from mindspore import nn

from ..config import ConfigError
from ..errors import NonFiniteError
from ..utils.checkpoint import CheckpointError, load_into, require_shapes
from .checkpoint_manager import CheckpointManager
from .ema import EMA
from .loss_scaler import LossScaler
from .losses import DiffusionLoss, StepInputs
from .lr_schedule import learning_rate
from .optimizer import AdamW
from .step_log import StepLogger
from .train_step import TrainStep

logger = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    output_dir: str
    max_steps: int | None = None  # None: epochs * batches per epoch
    epochs: int = 1
    lr: float = 1e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    end_lr: float = 0.0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.9999  # None: no EMA
    loss_scaler_type: str = "none"
    init_loss_scale: float = 65536.0
    loss_scale_factor: float = 2.0
    scale_window: int = 1000
    zero_stage: int = 0
    ckpt_every: int = 1000
    ckpt_max_keep: int = 3
    save_dtype: str = "float32"  # of model.ckpt and ema.ckpt
    log_interval: int = 10
    seed: int = 42
    class_dropout_prob: float = 0.0
    mask_ratios: dict | None = None
    progress_bar: bool = True
    extra_meta: dict = field(default_factory=dict)


class _OnceFilter(logging.Filter):
    """Let each distinct warning through once (the scheduler warns on every short-clip timestep draw)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_ONCE = _OnceFilter()
logging.getLogger("opensora.schedulers.rectified_flow").addFilter(_ONCE)


def _barrier() -> None:
    from mindspore import mint

    mint.distributed.barrier()


def _assign(params, values: dict, what: str) -> None:
    """Set every Parameter in ``params`` from ``values`` (by name), checking names and shapes."""
    require_shapes(values, {p.name: p.shape for p in params}, what)
    for p in params:
        v = values[p.name]
        p.set_data(ms.Tensor(v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)).astype(p.dtype))


class Trainer:
    """``model``: the diffusion model; ``scheduler``: IDDPM or RFlow (training_losses);
    ``loader``: a :class:`~opensora.datasets.loader.BatchLoader`; ``vae``: encodes raw clips
    (None when the loader yields cached latents)."""

    def __init__(self, model: nn.Cell, scheduler, loader, opts: TrainOptions, vae=None, rank: int = 0,
                 world: int = 1, data_rank: int | None = None, data_world: int | None = None):
        self.model, self.scheduler, self.loader, self.opts, self.vae = model, scheduler, loader, opts, vae
        self.rank, self.world = rank, world
        # whose samples and noise this rank draws: its own, or (sequence parallel) its group's
        self.data_rank = rank if data_rank is None else data_rank
        self.data_world = world if data_world is None else data_world
        from .mask_generator import MaskGenerator

        masks = MaskGenerator(opts.mask_ratios) if opts.mask_ratios else None
        self.step_inputs = StepInputs(scheduler, masks, opts.class_dropout_prob)
        self.loss_net = DiffusionLoss(model, scheduler, use_frame_mask=masks is not None)
        model.set_train(True)
        trainable = model.trainable_params()
        if not trainable:
            raise ConfigError("the model has no trainable parameters (check the model config's freeze setting)")
        self.optimizer = AdamW(trainable, lr=opts.lr, betas=opts.betas, eps=opts.adam_eps,
                               weight_decay=opts.weight_decay, shard=opts.zero_stage == 1, world=world, rank=rank)
        self.ema = EMA(trainable, opts.ema_decay, shard=opts.zero_stage == 1, world=world, rank=rank) \
            if opts.ema_decay else None
        self.scaler = LossScaler(opts.loss_scaler_type, opts.init_loss_scale, opts.loss_scale_factor, opts.scale_window)
        self.train_step = TrainStep(self.loss_net, self.optimizer, self.scaler, opts.grad_clip, self.ema, world)
        self.ckpt = CheckpointManager(opts.output_dir, opts.ckpt_max_keep, rank, world,
                                      barrier=_barrier if world > 1 else None)
        self.global_step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.losses: list[float] = []

    # ------------------------------------------------------------------ state
    def total_steps(self) -> int:
        if self.opts.max_steps:
            return int(self.opts.max_steps)
        return int(self.opts.epochs) * self.loader.num_batches(0)

    def _train_state(self) -> dict:
        return {p.name: p.value() for p in self.optimizer.state_parameters() + self.scaler.state_parameters()}

    def _weights(self, state: dict) -> dict:
        """Model or EMA weights as checkpoints hold them (``save_dtype``: float32 master weights by default)."""
        dtype = getattr(ms, self.opts.save_dtype)
        return {k: v.astype(dtype) if v.dtype in (ms.float32, ms.float16, ms.bfloat16) else v for k, v in state.items()}

    def _ema_state(self) -> dict | None:
        if self.ema is None:
            return None
        state = {p.name: p.value() for p in self.model.get_parameters()}  # non-trainable ones as they are
        state.update(self.ema.plain_state())
        return self._weights(state)

    def save(self) -> str:
        meta = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "zero_stage": self.opts.zero_stage,
                "seed": self.opts.seed, "loss_scale": float(self.scaler.scale_value.asnumpy()), **self.opts.extra_meta}
        model_state = self._weights({p.name: p.value() for p in self.model.get_parameters()})
        path = self.ckpt.save(self.global_step, model_state, self._ema_state(), self._train_state(), meta,
                              shard_state=self.optimizer.shard)
        if self.rank == 0:
            logger.info("saved checkpoint %s", path)
        return path

    def resume(self, resume) -> bool:
        path = self.ckpt.resolve(resume)
        if path is None:
            logger.info("resume: no checkpoint found in %s; starting from scratch", self.ckpt.root)
            return False
        state = self.ckpt.read(path, self.world, self.optimizer.shard)
        load_into(self.model, state["model"], source=f"{path}/model.ckpt", strict=True)
        if self.ema is not None:
            if state["ema"] is None:
                raise CheckpointError(f"{path}: no ema.ckpt but EMA is enabled")
            self.ema.load_plain_state(state["ema"], f"{path}/ema.ckpt")
        _assign(self.optimizer.state_parameters() + self.scaler.state_parameters(), state["train_state"],
                f"{path}/train_state")
        meta = state["meta"]
        self.global_step, self.epoch, self.batch_in_epoch = int(meta["step"]), int(meta["epoch"]), int(
            meta["batch_in_epoch"])
        logger.info("resumed from %s: step %d, epoch %d, batch %d", path, self.global_step, self.epoch,
                    self.batch_in_epoch)
        return True

    # ------------------------------------------------------------------ data
    def latents(self, batch: dict, rng: np.random.Generator) -> np.ndarray:
        """Cached latents pass through; raw clips go through the frozen VAE (posterior drawn on the host)."""
        if self.vae is None:
            return batch["x"]
        x = ms.Tensor(batch["x"])
        if hasattr(self.vae, "encode_posterior"):
            mean, std = self.vae.encode_posterior(x)
            mean, std = mean.asnumpy(), std.asnumpy()
            return (mean + std * rng.standard_normal(mean.shape).astype(np.float32)).astype(np.float32)
        return self.vae.encode(x).asnumpy().astype(np.float32)

    # ------------------------------------------------------------------ loop
    def fit(self) -> list[float]:
        opts, total = self.opts, self.total_steps()
        log = StepLogger(opts.output_dir, total, self.global_step, enabled=self.rank == 0,
                         log_interval=opts.log_interval, progress_bar=opts.progress_bar)
        try:
            while self.global_step < total:
                per_epoch = self.loader.num_batches(self.epoch)
                if self.batch_in_epoch >= per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    continue
                for index, batch in self.loader.epoch(self.epoch, self.batch_in_epoch):
                    self._one_step(batch, log)
                    self.batch_in_epoch = index + 1
                    if self.global_step % opts.ckpt_every == 0 or self.global_step == total:
                        self.save()
                    if self.global_step >= total:
                        break
                else:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        finally:
            log.close()
        failures = sum(self.loader.dataset.failures.values())
        if failures:
            logger.warning("%d unreadable samples were replaced during training: %s", failures,
                           dict(self.loader.dataset.failures))
        return self.losses

    def _one_step(self, batch: dict, log: StepLogger) -> None:
        opts = self.opts
        rng = np.random.default_rng([opts.seed, 7, self.global_step, self.data_rank])
        start = time.perf_counter()
        batch["x0"] = self.latents(batch, rng)
        inputs = self.step_inputs(batch, rng)
        lr = learning_rate(self.global_step, opts.lr, opts.warmup_steps, opts.lr_schedule, self.total_steps(),
                           opts.end_lr)
        loss, finite, scale, norm = self.train_step(ms.Tensor(lr, ms.float32), *inputs)
        loss = float(loss.asnumpy())
        elapsed = time.perf_counter() - start
        self.global_step += 1
        if not math.isfinite(loss) and opts.loss_scaler_type == "none":
            raise NonFiniteError(f"training step {self.global_step}: the loss is {loss}; likely cause: a learning rate "
                                 f"too high (lr {opts.lr:g}) or float16 overflow: lower --lr, or enable loss scaling "
                                 "(--loss_scaler_type dynamic)", step=self.global_step)
        self.losses.append(loss)
        batch_size = batch["x0"].shape[0] * self.data_world
        log.log(step=self.global_step, epoch=self.epoch, loss=loss, lr=lr, step_time_s=elapsed,
                samples_per_s=batch_size / elapsed, loss_scale=float(scale.asnumpy()),
                grad_norm=float(norm.asnumpy()), finite=bool(finite.asnumpy()))
