"""Configuration -> model, VAE, scheduler, data loader, trainer (what ``scripts/train.py`` runs)."""
from __future__ import annotations

import logging
import os

from ..config import Config, ConfigError
from ..dtypes import canonical
from ..models.layers import forms
from .trainer import Trainer, TrainOptions

logger = logging.getLogger(__name__)

TRAIN_SCHEDULER_DEFAULTS = {
    # upstream training builds IDDPM(timestep_respacing="") (all 1000 steps) and
    # RFlow(use_timestep_transform=True, sample_method="logit-normal")
    "iddpm": {"timestep_respacing": ""},
    "rflow": {"use_timestep_transform": True, "sample_method": "logit-normal"},
}


def check_config(cfg: Config) -> None:
    if not cfg.model or "type" not in cfg.model:
        raise ConfigError("model: give a model config with a type, e.g. {type: STDiT3-XL/2}")
    if not cfg.csv_path:
        raise ConfigError("csv_path is required (a csv with path/video and text/caption columns)")
    if cfg.dataset_sink_mode:
        raise ConfigError("dataset_sink_mode: not supported (the data pipeline is a Python iterator feeding a "
                          "compiled step); set it to false")
    if cfg.video_embed_folder is None and cfg.vae is None:
        raise ConfigError("raw videos (video_folder) need a vae config to encode them; or give video_embed_folder")
    if cfg.bucket_config and cfg.video_embed_folder:
        raise ConfigError("bucket_config resizes every clip to its bucket, which needs the raw videos: use "
                          "--video_folder with buckets, or drop bucket_config to train on cached latents "
                          "(one size, the one infer_vae.py cached)")
    if cfg.zero_impl == "builtin" and cfg.zero_stage == 1 and \
            not forms.builtin_optimizer_parallel_available(cfg.device_target):
        raise ConfigError("zero_impl builtin (MindSpore's enable_parallel_optimizer) runs on Ascend/GPU only; "
                          "use zero_impl collective on the CPU")
    if cfg.sp_size > 1 and (not cfg.use_parallel or not str(cfg.model.get("type", "")).startswith("STDiT3")):
        raise ConfigError(f"sp_size {cfg.sp_size}: sequence parallel trains STDiT3 models under msrun with "
                          f"--use_parallel True (model: {cfg.model.get('type')}, use_parallel: {cfg.use_parallel})")
    if canonical(cfg.dtype) == "bfloat16" and not forms.bfloat16_compute_available(cfg.device_target):
        raise ConfigError("dtype bf16 has no CPU kernels in MindSpore; use fp32 (or fp16) on the CPU")
    if not cfg.text_embed_folder:
        raise ConfigError("text_embed_folder is required: cache the T5 embeddings first with "
                          "`python scripts/infer_t5.py --csv_path ... --output_dir <text_embed_folder>`")
    check_data(cfg)  # a bad csv, or one whose files are missing, fails before any build


def check_data(cfg: Config) -> None:
    """Every csv row's files exist (its T5 cache file, and its video or latent cache file): rows without them
    are counted (training replaces such samples); a csv none of whose rows can be used is an error. Two rows
    that need one cache file with different captions are an error (the cache holds one caption per path)."""
    from ..datasets.dataset import read_csv_table
    from ..datasets.embedding_cache import cache_file_for, plan_cache_files

    table = read_csv_table(cfg.csv_path, need_size_columns=bool(cfg.bucket_config))
    for folder, option in ((cfg.text_embed_folder, "--text_embed_folder"),
                           (cfg.video_embed_folder, "--video_embed_folder"), (cfg.video_folder, "--video_folder")):
        if folder and not os.path.isdir(folder):
            raise ConfigError(f"{option} {folder}: not a folder")
    paths, texts = [str(p) for p in table["path"]], [str(t) for t in table["text"]]
    plan_cache_files(cfg.text_embed_folder, zip(paths, texts), cfg.csv_path)
    missing = []
    for rel in paths:
        needed = [cache_file_for(cfg.text_embed_folder, rel)]
        if cfg.video_embed_folder:
            needed.append(cache_file_for(cfg.video_embed_folder, rel))
        else:
            needed.append(rel if os.path.isabs(rel) else os.path.join(cfg.video_folder or "", rel))
        absent = [f for f in needed if not os.path.isfile(f)]
        if absent:
            missing.append(absent[0])
    if len(missing) == len(paths):
        raise ConfigError(f"no row of {cfg.csv_path} can be used: each lacks a file (e.g. {missing[0]}); check "
                          "--video_folder / --video_embed_folder / --text_embed_folder (the caches of "
                          "scripts/infer_t5.py and scripts/infer_vae.py)")
    if missing:
        logger.warning("%d of %d csv row(s) lack a file (e.g. %s); training replaces those samples with others",
                       len(missing), len(paths), missing[0])


def check_outputs(cfg: Config) -> None:
    """The output folder is writable, and holds no other run unless ``--resume`` continues it (the
    command line's policy: ``scripts/train.py`` calls it; :func:`build_trainer` does not)."""
    from ..utils.outputs import prepare_output_dir
    from .checkpoint_manager import CHECKPOINT_DIR, run_files

    found = run_files(cfg.outputs)
    if found and not cfg.resume:
        raise ConfigError(f"--outputs {cfg.outputs} already holds a run ({', '.join(found[:3])}): give --resume to "
                          "continue it (from its latest checkpoint), or a new --outputs folder")
    if found and cfg.resume and str(cfg.resume).lower() not in ("true", "latest"):
        own = os.path.abspath(os.path.join(cfg.outputs, CHECKPOINT_DIR))
        if os.path.commonpath([own, os.path.abspath(str(cfg.resume))]) != own:
            raise ConfigError(f"--resume {cfg.resume} is not a checkpoint of the run in --outputs {cfg.outputs}; "
                              "resuming another run into this folder would mix the two: give a new --outputs")
    prepare_output_dir(cfg.outputs, "--outputs")


def build_model(cfg: Config, sequence_parallel: bool = False):
    from ..models.registry import MODELS

    kwargs = dict(cfg.model)
    if sequence_parallel:  # the runtime set up the groups; the model splits each sample's tokens across them
        kwargs["enable_sequence_parallelism"] = True
    kwargs.setdefault("dtype", canonical(cfg.dtype))
    kwargs.setdefault("weights_dtype", "float32")  # float32 master weights; the layers compute in dtype
    if kwargs["type"].startswith("STDiT-") and not kwargs.get("input_size"):
        # STDiT 1.0 has a fixed latent size (upstream: vae.get_latent_size)
        kwargs["input_size"] = tuple(vae_geometry(cfg).latent_size((cfg.num_frames, *_image_size(cfg))))
    if cfg.grad_checkpoint:
        kwargs["grad_checkpointing"] = True
        if cfg.num_recompute_blocks is not None:
            kwargs["num_recompute_blocks"] = cfg.num_recompute_blocks
    model = MODELS.build(kwargs)
    if cfg.pretrained_pixart:
        from .pixart_init import load_pixart

        load_pixart(model, cfg.pretrained_pixart)
    if cfg.ckpt_path:
        from ..utils.checkpoint import load_checkpoint

        report = load_checkpoint(model, cfg.ckpt_path, strict=False)
        if not report.ok:
            logger.warning("ckpt_path %s:\n%s", cfg.ckpt_path, report.format())
    return model


def build_scheduler(cfg: Config):
    from ..schedulers import build_scheduler as build

    sched = dict(cfg.scheduler or {"type": "iddpm"})
    kind = sched.get("type")
    for key, value in TRAIN_SCHEDULER_DEFAULTS.get(kind, {}).items():
        sched.setdefault(key, value)
    if kind == "iddpm":  # a sampling config's respacing must not shorten the training process
        sched.pop("num_sampling_steps", None)
        sched["timestep_respacing"] = ""
    return build(sched)


def build_vae(cfg: Config):
    if cfg.video_embed_folder:
        return None
    from ..models.registry import VAES

    vae = VAES.build(dict(cfg.vae))
    vae.set_train(False)
    for p in vae.get_parameters():
        p.requires_grad = False
    return vae


def _image_size(cfg: Config) -> tuple[int, int]:
    size = cfg.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def build_loader(cfg: Config, rank: int, world: int):
    from ..datasets.dataset import VideoTextDataset
    from ..datasets.loader import BatchLoader
    from ..datasets.sampler import BucketBatchSampler, FixedSizeBatchSampler

    dataset = VideoTextDataset(cfg.csv_path, cfg.video_folder, cfg.text_embed_folder, cfg.video_embed_folder,
                               cfg.frame_interval, cfg.transform_name, need_size_columns=bool(cfg.bucket_config),
                               repeat_images=not cfg.bucket_config)
    if cfg.bucket_config:
        sampler = BucketBatchSampler(dataset.size_infos(), cfg.bucket_config, cfg.frame_interval, world, rank,
                                     cfg.seed)
        if sampler.dropped:
            logger.info("buckets: %d of %d samples fit no bucket and are not used", sampler.dropped, len(dataset))
    else:
        h, w = _image_size(cfg)
        sampler = FixedSizeBatchSampler(len(dataset), cfg.batch_size, cfg.num_frames, h, w, world, rank, cfg.seed)
    latent_frames = None
    if cfg.video_embed_folder and not cfg.bucket_config:
        latent_frames = _latent_frames_fn(cfg)
    return BatchLoader(dataset, sampler, cfg.seed, rank, cfg.num_workers, latent_frames=latent_frames)


def vae_geometry(cfg: Config):
    """The latent geometry of the config's VAE, without building it. Training from cached latents may omit
    the VAE section: the latents are then taken as one per frame (the SD VAE of 1.0/1.1)."""
    from ..models.vae.geometry import FramewiseGeometry, geometry_of

    return geometry_of(dict(cfg.vae)) if cfg.vae else FramewiseGeometry(channels=4, spatial_factor=8)


def _latent_frames_fn(cfg: Config):
    """How many latent frames a clip of n pixel frames gives (cached latents are cut to it)."""
    return vae_geometry(cfg).latent_frames


def build_trainer(cfg: Config, runtime) -> Trainer:
    check_config(cfg)
    rank, world = runtime.rank_id, runtime.device_num
    # sequence parallel: the sp_size ranks of a group hold the same samples (data rank = group), the same noise
    sp_size = getattr(runtime, "sp_size", 1)
    data_rank, data_world = rank // sp_size, world // sp_size
    from ..runtime import set_seed

    set_seed(cfg.seed)  # the model's initial weights are the same on every rank and every run
    model = build_model(cfg, sequence_parallel=sp_size > 1)
    scheduler = build_scheduler(cfg)
    vae = build_vae(cfg)
    loader = build_loader(cfg, data_rank, data_world)
    y_embedder = getattr(model, "y_embedder", None)
    opts = TrainOptions(
        output_dir=cfg.outputs, max_steps=cfg.max_steps, epochs=cfg.epochs, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        lr_schedule=cfg.lr_schedule, end_lr=cfg.end_lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
        adam_eps=cfg.adam_eps, grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay if cfg.use_ema else None,
        loss_scaler_type=cfg.loss_scaler_type, init_loss_scale=cfg.init_loss_scale,
        loss_scale_factor=cfg.loss_scale_factor, scale_window=cfg.scale_window,
        zero_stage=0 if runtime.builtin_optimizer_parallel else cfg.zero_stage,  # MindSpore shards it then
        ckpt_every=cfg.ckpt_every, ckpt_max_keep=cfg.ckpt_max_keep, save_dtype=canonical(cfg.save_dtype),
        log_interval=cfg.log_every, seed=cfg.seed,
        class_dropout_prob=float(getattr(y_embedder, "uncond_prob", 0.0) or 0.0), mask_ratios=cfg.mask_ratios,
        progress_bar=cfg.progress_bar and runtime.rank_id == 0,
        extra_meta={"config": cfg.config, "model": cfg.model.get("type")})
    return Trainer(model, scheduler, loader, opts, vae=vae, rank=rank, world=world, data_rank=data_rank,
                   data_world=data_world)
