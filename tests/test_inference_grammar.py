"""Mask strategies, prompts and output names: the documented recipes, in 1.1 and 1.2 units.

Expected placements are derived by hand from upstream's rules (docs/commands.md recipes, the
inference_utils.py arithmetic), written out here as literal frame indices.
"""
import numpy as np
import pytest

from opensora.config import ConfigError

from opensora.inference.mask_strategy import (MaskGroup, MaskStrategyError, apply_mask_strategy,
                                              find_nearest_point, parse_mask_strategy)
from opensora.inference.output import save_path_name
from opensora.inference.prompts import (PromptError, append_scores, extract_json_from_prompts, load_prompts,
                                        prompt_for_loop, safe_file_name, split_prompt)


def test_defaults_fill_missing_fields():
    assert parse_mask_strategy("0") == [MaskGroup(0, 0, 0, 0, 1, 0.0)]
    assert parse_mask_strategy("0,0,0,-8,8") == [MaskGroup(0, 0, 0, -8, 8, 0.0)]
    assert parse_mask_strategy("0;0,1,0,-1,1") == [MaskGroup(0, 0, 0, 0, 1, 0.0), MaskGroup(0, 1, 0, -1, 1, 0.0)]
    assert parse_mask_strategy("0,0,0,0,32,0.4") == [MaskGroup(0, 0, 0, 0, 32, 0.4)]
    assert parse_mask_strategy("") == [] and parse_mask_strategy(None) == []


@pytest.mark.parametrize("bad", ["a", "0,0,0,0,1,0,0", "0,,1", "0,0,0,0,1,1.5", "0,0,0,0,0", "0,-1", "0,0,0,0,1.5"])
def test_malformed_strategies_are_clear_errors(bad):
    with pytest.raises(MaskStrategyError, match="mask strategy group"):
        parse_mask_strategy(bad)


def test_align_snaps_like_upstream():
    # 15 latent frames: 0-2 -> 0, 3-7 -> 5, 8-14 -> 10 (never past the last full chunk)
    got = [find_nearest_point(v, 5, 15) for v in range(15)]
    assert got == [0, 0, 0, 5, 5, 5, 5, 5, 10, 10, 10, 10, 10, 10, 10]


def latent(t, fill=0.0):
    return np.full((4, t, 2, 2), fill, np.float32)


def placed(z, value):
    return [i for i in range(z.shape[2]) if np.all(z[0, :, i] == value)]


def test_i2v_recipe_both_versions():
    for t in (16, 15):  # 1.1: 16 pixel(=latent) frames; 1.2: 15 latent frames
        z = np.zeros((1, 4, t, 2, 2), np.float32)
        mask = apply_mask_strategy(z, [[latent(1, 7.0)]], ["0"], 0, align=None if t == 16 else 5)
        assert placed(z, 7.0) == [0]
        np.testing.assert_array_equal(mask[0], [0.0] + [1.0] * (t - 1))


def test_extend_recipe_units():
    # "0,0,0,-8,8": 1.1 (16 frames, video reference of 16 frames): frames 8..15 <- ref frames 0..7
    z = np.zeros((1, 4, 16, 2, 2), np.float32)
    ref = np.stack([np.full((4, 2, 2), i, np.float32) for i in range(16)], axis=1)
    mask = apply_mask_strategy(z, [[ref]], ["0,0,0,-8,8"], 0)
    assert [int(z[0, 0, i, 0, 0]) for i in range(8, 16)] == list(range(8))
    np.testing.assert_array_equal(mask[0], [1.0] * 8 + [0.0] * 8)
    # 1.2 (15 latent frames, align 5): -8 -> 7 -> snapped to 5; length min(8, 10, 15) = 8 -> frames 5..12
    z = np.zeros((1, 4, 15, 2, 2), np.float32)
    ref = np.stack([np.full((4, 2, 2), i + 1, np.float32) for i in range(15)], axis=1)
    mask = apply_mask_strategy(z, [[ref]], ["0,0,0,-8,8"], 0, align=5)
    assert [int(z[0, 0, i, 0, 0]) for i in range(15)] == [0] * 5 + list(range(1, 9)) + [0, 0]
    np.testing.assert_array_equal(mask[0], [1.0] * 5 + [0.0] * 8 + [1.0] * 2)


def test_connect_recipe_start_and_end_frames():
    # "0;0,1,0,-1,1": image 0 at the first frame, image 1 at the last (1.2: -1 -> 14 -> snapped to 10)
    for t, align, last in ((16, None, 15), (15, 5, 10)):
        z = np.zeros((1, 4, t, 2, 2), np.float32)
        mask = apply_mask_strategy(z, [[latent(1, 3.0), latent(1, 9.0)]], ["0;0,1,0,-1,1"], 0, align=align)
        assert placed(z, 3.0) == [0] and placed(z, 9.0) == [last]
        assert mask[0, 0] == 0 and mask[0, last] == 0 and mask[0].sum() == t - 2


def test_edit_recipe_ratio():
    # "0,0,0,0,32,0.4": v2v editing of the whole clip with edit ratio 0.4 (length clipped to what fits)
    z = np.zeros((1, 4, 15, 2, 2), np.float32)
    mask = apply_mask_strategy(z, [[latent(30, 5.0)]], ["0,0,0,0,32,0.4"], 0, align=5)
    assert placed(z, 5.0) == list(range(15))
    np.testing.assert_allclose(mask[0], 0.4)


def test_loop_id_selects_groups_and_missing_reference_is_clear():
    z = np.zeros((1, 4, 15, 2, 2), np.float32)
    assert apply_mask_strategy(z, [[latent(1)]], ["1"], 0) is None  # group for loop 1 only
    with pytest.raises(MaskStrategyError, match="refers to reference 1"):
        apply_mask_strategy(z, [[latent(1)]], ["0,1"], 0)


def test_json_suffix_and_errors():
    texts, refs, masks = extract_json_from_prompts(
        ['a cat{"reference_path": "x.png", "mask_strategy": "0"}', "a dog"], ["", ""], ["", ""])
    assert texts == ["a cat", "a dog"] and refs == ["x.png", ""] and masks == ["0", ""]
    with pytest.raises(PromptError, match="JSON"):
        extract_json_from_prompts(['a cat{"reference_path": "x.png"'], [""], [""])
    with pytest.raises(PromptError, match="unknown JSON key"):
        extract_json_from_prompts(['a cat{"refrence_path": "x.png"}'], [""], [""])


def test_loop_prompts_and_scores():
    assert split_prompt("|0|a cat|2|a dog") == (["a cat", "a dog"], [0, 2])
    assert [prompt_for_loop("|0|a cat|2|a dog", i) for i in range(4)] == ["a cat", "a cat", "a dog", "a dog"]
    with pytest.raises(PromptError):
        split_prompt("|0|a cat|x|a dog")
    assert append_scores("a cat", aes=6.5, flow=10, camera_motion="pan right") == \
        "a cat aesthetic score: 6.5. motion score: 10.0. camera motion: pan right."
    assert append_scores("a cat aesthetic score: 7.0.", aes=6.5) == "a cat aesthetic score: 7.0."


def test_output_names_like_upstream(tmp_path):
    assert save_path_name("out", None, 3) == "out/sample_0003"
    assert save_path_name("out", "run", 12, num_sample=2, k=1) == "out/run_0012-1"
    assert save_path_name("out", None, 0, "a cat/dog?", prompt_as_path=True) == "out/a cat_dog_"
    assert "/" not in safe_file_name("../../etc/passwd")


def test_prompt_files_txt_and_csv(tmp_path):
    (tmp_path / "p.txt").write_text("a\nb\nc\n")
    assert load_prompts(str(tmp_path / "p.txt"), 1, 3) == ["b", "c"]
    (tmp_path / "p.csv").write_text("path,text\nx.mp4,a cat\ny.mp4,a dog\n")
    assert load_prompts(str(tmp_path / "p.csv")) == ["a cat", "a dog"]
    (tmp_path / "q.csv").write_text("path,caption\nx.mp4,a cat\n")  # the training csv's other spelling
    assert load_prompts(str(tmp_path / "q.csv")) == ["a cat"]
    (tmp_path / "r.csv").write_text("path,description\nx.mp4,a cat\n")
    with pytest.raises(ConfigError, match="'text'"):
        load_prompts(str(tmp_path / "r.csv"))
