"""T5 as Open-Sora 2.0 calls it (``"text_embedder"``: 512 tokens, padded, truncated, no attention mask) against
``transformers.T5EncoderModel`` called the same way (tests/reference/text_embedder_torch.py), on the tiny T5."""
import numpy as np
import pytest

import mindspore as ms

from opensora.models.registry import TEXT_ENCODERS
from opensora.models.text_encoder import HFEmbedder
from tests.fixtures.tiny_t5 import make_tiny_t5_dir, torch_reference
from tests.reference.text_embedder_torch import HFEmbedderReference

TEXTS = ["a cat flies over the river.", "", "the dog runs beside an empty road at night " * 60, "Ünïcödé 日本語"]
MAX_LENGTH = 512
TOL = 1e-4


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return make_tiny_t5_dir(str(tmp_path_factory.mktemp("ckpts") / "google" / "t5-v1_1-xxl"))


@pytest.fixture(scope="module")
def upstream(t5_dir):
    return HFEmbedderReference(t5_dir, MAX_LENGTH)


def test_t5_without_mask_matches_transformers(t5_dir, upstream):
    """Upstream's config dict; (B, 512, D) states equal to transformers' with attention_mask=None, both modes.
    The masked encoder gives other numbers at the real tokens too, so this checks the mask is really gone."""
    embedder = TEXT_ENCODERS.build({"type": "text_embedder", "from_pretrained": t5_dir, "max_length": MAX_LENGTH,
                                    "shardformer": True})
    assert not embedder.is_clip and embedder.output_dim == 32
    ids, mask = embedder.embedder.tokenize(TEXTS)
    np.testing.assert_array_equal(ids, upstream.tokenize(TEXTS).numpy())
    assert mask[2].all() and mask[0].sum() < 20  # one prompt truncated, the others padded
    expected = upstream(TEXTS)
    masked = torch_reference(t5_dir, ids, mask)
    real = mask.astype(bool)
    assert np.abs(masked - expected)[real].max() > 1e-2
    for mode in (ms.PYNATIVE_MODE, ms.GRAPH_MODE):
        ms.set_context(mode=mode)
        out = embedder(TEXTS).asnumpy()
        assert out.shape == (len(TEXTS), MAX_LENGTH, 32)
        assert np.abs(out - expected).max() <= TOL, (mode, np.abs(out - expected).max())


def test_sequence_alignment_padding(t5_dir, upstream):
    """added_tokens / seq_align pad the ids with the pad token (upstream's sequence-parallel alignment)."""
    embedder = HFEmbedder(t5_dir, max_length=16)
    upstream_16 = HFEmbedderReference(t5_dir, 16)
    out = embedder(TEXTS[:2], added_tokens=3, seq_align=8).asnumpy()
    expected = upstream_16(TEXTS[:2], 3, 8)
    assert out.shape == expected.shape == (2, 21, 32)
    assert np.abs(out - expected).max() <= TOL


def test_is_clip_explicit_key(t5_dir):
    """Without "openai" in the path the folder is T5; is_clip=True asks for CLIP and so its tokenizer files."""
    from opensora.models.text_encoder.tokenizer import TokenizerError

    with pytest.raises(TokenizerError, match="vocab.json or tokenizer.json"):
        HFEmbedder(t5_dir, max_length=77, is_clip=True)
