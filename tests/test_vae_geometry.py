"""Every VAE's frame and size arithmetic lives in its geometry (opensora/models/vae/geometry.py): checked
against upstream's arithmetic (tests/reference/vae_frames.py) for 1-120 frames, asked of a config without
building the VAE, equal to the built VAE's, and the pipeline-class config equal to OpenSoraVAE_V1_2's."""
import pytest

from opensora.models.registry import VAES
from opensora.models.vae.geometry import CausalGeometry, ChunkedGeometry, FrameCountError, FramewiseGeometry, \
    geometry_of
from tests.fixtures.tiny_vae import TINY_SD_CONFIG, TINY_TEMPORAL_KWARGS
from tests.reference.vae_frames import pipeline_decode_chunks, pipeline_latent_frames

FRAMES = range(1, 121)


@pytest.mark.parametrize("micro", [17, 8, 12, 33, None])
def test_chunked_latent_frames_match_upstream(micro):
    geometry = ChunkedGeometry(channels=4, micro_frame_size=micro)
    for n in FRAMES:
        assert geometry.latent_frames(n) == pipeline_latent_frames(n, micro), n
    if micro is None:
        return
    for n in FRAMES:  # what each decoded chunk holds, as upstream's decode loop asks the temporal VAE
        chunks = pipeline_decode_chunks(geometry.latent_frames(n), n, micro)
        assert geometry.chunk_pixel_frames(n) == [frames for _, frames in chunks], n


@pytest.mark.parametrize("micro", [17, 8, 12])
def test_chunked_pixel_frames_inverts_whole_chunks(micro):
    geometry = ChunkedGeometry(channels=4, micro_frame_size=micro)
    whole = geometry.latent_chunk
    for chunks in range(1, 8):
        assert geometry.pixel_frames(chunks * whole) == chunks * micro
        assert geometry.latent_frames(chunks * micro) == chunks * whole
    with pytest.raises(FrameCountError, match="several frame counts"):
        geometry.pixel_frames(whole + 1)


def test_causal_and_framewise_rules():
    causal = CausalGeometry(channels=16, time_factor=4)
    for k in range(0, 33):
        assert causal.latent_frames(4 * k + 1) == k + 1 and causal.pixel_frames(k + 1) == 4 * k + 1
    with pytest.raises(FrameCountError, match="4k\\+1"):
        causal.latent_frames(16)
    frames = FramewiseGeometry(channels=4)
    assert [frames.latent_frames(n) for n in (1, 16, 51)] == [1, 16, 51]
    assert frames.latent_size((16, 256, 512)) == [16, 32, 64]
    with pytest.raises(FrameCountError):
        frames.latent_frames(0)


def test_config_geometry_equals_the_built_vaes():
    """Asked of a config (no weights, no build) or of the built VAE: the same answer, for every VAE type; and
    a config naming the pipeline class works as OpenSoraVAE_V1_2's does."""
    v12 = {"type": "OpenSoraVAE_V1_2", "vae_2d_config": TINY_SD_CONFIG, "temporal_kwargs": TINY_TEMPORAL_KWARGS,
           "micro_frame_size": 17}
    pipeline = {"type": "VideoAutoencoderPipeline", "micro_frame_size": 17,
                "vae_2d": {"type": "VideoAutoencoderKL", "config": TINY_SD_CONFIG},
                "vae_temporal": {"type": "VAE_Temporal", **TINY_TEMPORAL_KWARGS}}
    sd = {"type": "VideoAutoencoderKL", "config": TINY_SD_CONFIG}
    for cfg in (v12, pipeline, sd):
        built = VAES.build(dict(cfg)).geometry
        assert geometry_of(cfg) == built, cfg["type"]
    assert geometry_of(v12) == geometry_of(pipeline) == ChunkedGeometry(4, 8, 4, 17)
    assert geometry_of({"type": "OpenSoraVAE_V1_2"}) == ChunkedGeometry(4, 8, 4, 17)  # the full-size one
    for n in (1, 17, 20, 51, 102):
        assert geometry_of(v12).latent_size((n, 240, 424)) == [pipeline_latent_frames(n), 30, 53]
