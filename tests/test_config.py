"""Configuration: YAML + command line, spellings, type and choice checks, unknown keys, presets."""
import pytest

from opensora.config import ConfigError, Option, Schema, optional, str2bool
from opensora.datasets.aspect import get_image_size, get_num_frames, num_pixels, resolutions


def schema():
    return Schema([
        Option("num_frames", get_num_frames, 51),
        Option("resolution", str, "240p", choices=("144p", "240p", "720p")),
        Option("aspect_ratio", str, "9:16"),
        Option("cfg_scale", float, 7.0),
        Option("prompt", str, None, nargs="+"),
        Option("prompt_as_path", str2bool, False),
        Option("seed", optional(int), None),
        Option("scheduler", is_dict=True, default={"type": "rflow", "num_sampling_steps": 30}),
        Option("save_dir", str, "./samples", aliases=("output_path",)),
    ])


def write_yaml(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_yaml_then_command_line(tmp_path):
    path = write_yaml(tmp_path, "num_frames: 4s\ncfg_scale: 4\nscheduler: {type: rflow, num_sampling_steps: 30}\n")
    cfg = schema().parse(["--config", path, "--cfg-scale", "5.5", "--scheduler.num_sampling_steps", "10"])
    assert cfg.num_frames == 102
    assert cfg.cfg_scale == 5.5 and isinstance(cfg.cfg_scale, float)
    assert cfg.scheduler == {"type": "rflow", "num_sampling_steps": 10}
    assert cfg.resolution == "240p"
    assert cfg.config == path


@pytest.mark.parametrize("argv", [["--num-frames", "2s"], ["--num_frames", "2s"], ["--num-frames=2s"]])
def test_both_flag_spellings(argv):
    assert schema().parse(argv).num_frames == 51


def test_flags_lists_and_aliases():
    cfg = schema().parse(["--prompt", "a cat", "a dog", "--prompt-as-path", "--seed", "none", "--output_path", "o"])
    assert cfg.prompt == ["a cat", "a dog"]
    assert cfg.prompt_as_path is True and cfg.seed is None and cfg.save_dir == "o"
    assert schema().parse(["--prompt_as_path", "False"]).prompt_as_path is False


def test_unknown_yaml_key_names_closest(tmp_path):
    path = write_yaml(tmp_path, "num_frame: 51\n")
    with pytest.raises(ConfigError, match="did you mean 'num_frames'"):
        schema().parse(["--config", path])


def test_unknown_command_line_key_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'cfg_scale'"):
        schema().parse(["--cfg-scal", "3"])


@pytest.mark.parametrize("argv, message", [
    (["--cfg-scale", "high"], "cfg_scale"),
    (["--resolution", "1080p"], "choose one of"),
    (["--num-frames", "0"], "at least 1"),
    (["--num-frames", "3q"], "num_frames"),
    (["--prompt-as-path", "maybe"], "boolean"),
])
def test_bad_command_line_values(argv, message):
    with pytest.raises(ConfigError, match=message):
        schema().parse(argv)


def test_types_are_checked_in_yaml_too(tmp_path):
    with pytest.raises(ConfigError, match="config file"):
        schema().parse(["--config", write_yaml(tmp_path, "cfg_scale: [1, 2]\n")])
    with pytest.raises(ConfigError, match="mapping"):
        schema().parse(["--config", write_yaml(tmp_path, "scheduler: 3\n")])


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        schema().parse(["--config", str(tmp_path / "nope.yaml")])


def test_dotted_override_of_a_plain_key_is_refused():
    with pytest.raises(ConfigError, match="not a section"):
        schema().parse(["--cfg_scale.x", "1"])


# Presets: values from Open-Sora 1.2's tables (height x width; ratios are H:W).
@pytest.mark.parametrize("resolution, ratio, size", [
    ("240p", "9:16", (240, 426)), ("240p", "16:9", (426, 240)), ("144p", "3:4", (166, 221)),
    ("480p", "9:16", (480, 854)), ("720p", "1:1", (960, 960)), ("720p", "4:3", (1108, 832)),
    ("360p", "3:4", (416, 554)), ("144p", "4:3", (221, 165)),
])
def test_image_size_presets(resolution, ratio, size):
    assert get_image_size(resolution, ratio) == size


def test_preset_tables_cover_upstream_names():
    assert {"144p", "240p", "360p", "480p", "720p", "1080p", "2k", "4k", "256", "512", "1024", "2048", "2880"} \
        <= set(resolutions())
    assert num_pixels("720p") == 921600


@pytest.mark.parametrize("text, frames", [
    ("2s", 51), ("4s", 102), ("8s", 204), ("16s", 408), ("32s", 816),
    ("1x", 51), ("2x", 102), ("16x", 816), ("17", 17), (1, 1), ("51", 51),
])
def test_num_frames_presets(text, frames):
    assert get_num_frames(text) == frames


def test_unknown_resolution_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid resolutions: .*240p"):
        get_image_size("250p", "9:16")


def test_unknown_ratio_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid ratios .*9:16"):
        get_image_size("240p", "7:5")
