"""Upstream's frame arithmetic of the Open-Sora 1.2 VAE, transcribed from opensora/v1.2
(``vae_temporal.py: VAE_Temporal.get_latent_size`` and ``vae.py: VideoAutoencoderPipeline.get_latent_size /
decode``), for the tests of ``opensora/models/vae/geometry.py``. Kept in upstream's form on purpose."""


def temporal_latent_frames(num_frames, time_downsample_factor=4):
    time_padding = 0 if num_frames % time_downsample_factor == 0 else \
        time_downsample_factor - num_frames % time_downsample_factor
    return (num_frames + time_padding) // time_downsample_factor


def pipeline_latent_frames(num_frames, micro_frame_size=17, time_downsample_factor=4):
    if micro_frame_size is None:
        return temporal_latent_frames(num_frames, time_downsample_factor)
    size = temporal_latent_frames(micro_frame_size, time_downsample_factor) * (num_frames // micro_frame_size)
    remain = num_frames % micro_frame_size
    if remain > 0:
        size += temporal_latent_frames(remain, time_downsample_factor)
    return size


def pipeline_decode_chunks(latent_frames, num_frames, micro_frame_size=17, time_downsample_factor=4):
    """[(latent frames, pixel frames asked)] of each temporal decode call of ``decode(z, num_frames)``."""
    ct = temporal_latent_frames(micro_frame_size, time_downsample_factor)
    calls = []
    for i in range(0, latent_frames, ct):
        calls.append((min(ct, latent_frames - i), min(micro_frame_size, num_frames)))
        num_frames -= micro_frame_size
    return calls
