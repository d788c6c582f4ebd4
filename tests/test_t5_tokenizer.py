"""T5 tokenization (padding, truncation, empty and non-ASCII prompts) and upstream's caption cleaning."""
import os

import numpy as np
import pytest
import sentencepiece as spm

from opensora.models.text_encoder.text_cleaning import clean_caption, fix_text, html_to_text, text_preprocessing
from opensora.models.text_encoder.tokenizer import TokenizerError, load_t5_tokenizer, tokenize
from tests.fixtures.tiny_t5 import write_tokenizer_files

PAD, EOS, UNK = 0, 1, 2
L = 24


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok"))
    write_tokenizer_files(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    return load_t5_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def sp(tok_dir):
    """The independent reference: sentencepiece itself (T5 appends </s>, pads with <pad>)."""
    return spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "spiece.model"))


def test_padding_and_mask(tokenizer, sp):
    ids, mask = tokenize(tokenizer, ["a cat", "the dog sits near the river."], L)
    assert ids.shape == mask.shape == (2, L) and ids.dtype == np.int32 and mask.dtype == np.uint8
    for row, text in enumerate(["a cat", "the dog sits near the river."]):
        expected = sp.encode(text) + [EOS]
        n = len(expected)
        assert n < L
        assert ids[row, :n].tolist() == expected
        assert (ids[row, n:] == PAD).all()
        assert mask[row].tolist() == [1] * n + [0] * (L - n)


def test_truncation_keeps_eos(tokenizer, sp):
    text = "a young woman walks along the green hills near a busy market at night " * 3
    assert len(sp.encode(text)) > 12
    ids, mask = tokenize(tokenizer, text, 12)
    assert ids.shape == (1, 12)
    assert ids[0].tolist() == sp.encode(text)[:11] + [EOS]
    assert mask.all()


def test_empty_prompt_is_just_eos(tokenizer):
    ids, mask = tokenize(tokenizer, [""], L)
    assert ids[0].tolist() == [EOS] + [PAD] * (L - 1)
    assert mask[0].tolist() == [1] + [0] * (L - 1)


def test_non_ascii_prompt(tokenizer, sp):
    text = "Ünïcödé café 日本語 – a cat"
    ids, mask = tokenize(tokenizer, [text], 32)
    expected = sp.encode(text) + [EOS]
    assert ids[0, :len(expected)].tolist() == expected
    assert UNK in expected  # characters the tiny vocabulary never saw become <unk>, not an error
    assert mask[0].sum() == len(expected)


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="spiece.model"):
        load_t5_tokenizer(str(tmp_path))
    with pytest.raises(TokenizerError, match="not found"):
        load_t5_tokenizer(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("raw, cleaned", [
    # expectations worked out by hand from upstream's regular expressions (opensora/models/text_encoder/t5.py)
    ("Visit https://example.com/page now!", "visit now!"),
    ("@user a cat on www.site.com", "a cat on"),
    ("A <b>bold</b> cat &amp; dog", "a bold cat dog"),
    ("this-is-my-cute-cat", "this is my cute cat"),
    ("a red car 日本 drives", "a red car drives"),
    ("“quoted” — dash", '"quoted" - dash'),
    ("photo_1234567.jpg of a cat", "of a cat"),
    ("  Hello   World  ", "hello world"),
    ("a cat...dog", "a cat dog"),
])
def test_text_preprocessing_like_upstream(raw, cleaned):
    assert text_preprocessing(raw) == cleaned
    assert text_preprocessing(raw, use_text_preprocessing=False) == raw.lower().strip()


def test_fix_text_and_html_stand_ins():
    assert fix_text("The cafÃ© is open") == "The café is open"  # UTF-8 read as cp1252
    assert fix_text("ﬁne ＡＢＣ\x00") == "fine ABC"
    assert html_to_text("<p>a &lt;cat&gt;</p><!-- note -->") == "a <cat>"
    assert clean_caption("<person> walks") == "person walks"
