"""Open-Sora 2.0's Hunyuan causal 3D video VAE. Importing this package registers it in ``registry.VAES``
under upstream's name ``hunyuan_vae`` (with its latent geometry, askable without building)."""
from .autoencoder import AutoencoderKLCausal3D, CausalVAE3D_HUNYUAN, causal_geometry

__all__ = ["AutoencoderKLCausal3D", "CausalVAE3D_HUNYUAN", "causal_geometry"]
