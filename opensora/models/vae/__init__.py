"""VAEs: the SD/SDXL image VAE (``AutoencoderKL``), ``VideoAutoencoderKL`` (Open-Sora 1.0/1.1), the causal
temporal VAE and the 1.2 pipeline. Importing this package registers them in ``registry.VAES`` under
upstream's names: ``VideoAutoencoderKL``, ``VAE_Temporal``, ``VAE_Temporal_SD``,
``VideoAutoencoderPipeline``, ``OpenSoraVAE_V1_2``; and Open-Sora 2.0's Flux image autoencoder, ``autoencoder_2d``."""
from .autoencoder_2d import AutoEncoderFlux
from .autoencoder_kl import AutoencoderKL
from .vae_temporal import VAE_Temporal, VAE_Temporal_SD
from .video_vae import OpenSoraVAE_V1_2, VideoAutoencoderKL, VideoAutoencoderPipeline

__all__ = ["AutoEncoderFlux", "AutoencoderKL", "VAE_Temporal", "VAE_Temporal_SD", "VideoAutoencoderKL",
           "VideoAutoencoderPipeline", "OpenSoraVAE_V1_2"]
