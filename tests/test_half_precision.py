"""Half precision as upstream runs it: ``dtype: fp16/bf16`` is upstream's ``model.to(dtype)``. float16 is the
CPU's stand-in for the device's bfloat16 (MindSpore's CPU backend computes nothing in bfloat16).

- the dtype flows: every block's input and output, the attention inputs and every token-size activation are
  float16 in a float16 model (STDiT, STDiT2, STDiT3, the SD VAE and the 1.2 VAE), the weights are held in
  float16 (bfloat16 models are built with bfloat16 weights);
- float16 parity against the PyTorch references run with ``.half()`` (relative L2 error <= 1e-2);
- flash attention is taken per call by upstream's rule and in the model's half precision.
"""
import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import nn

from opensora.models.layers import attention as attn_mod
from opensora.models.layers import forms
from opensora.models.layers.blocks import Attention, MultiHeadCrossAttention
from opensora.models.registry import VAES
from tests.fixtures.tiny_stdit import build_tiny, tiny_checkpoint, tiny_inputs
from tests.fixtures.tiny_vae import TINY_SD_CONFIG, TINY_TEMPORAL_KWARGS, make_opensora_vae_dir, make_sd_vae_dir

REL_L2 = 1e-2
FLOATS = (ms.float16, ms.float32, ms.bfloat16)


def _rel_l2(got, expected):
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


class _DtypeRecorder:
    """Forward hooks on every cell of a model: records the dtype of each floating input/output tensor with at
    least ``min_size`` elements (token-size activations), by cell name."""

    def __init__(self, net: nn.Cell, min_size: int):
        self.min_size = min_size
        self.seen: list[tuple[str, str, object]] = []
        self.handles = [cell.register_forward_hook(self._hook(name)) for name, cell in net.cells_and_names() if name]

    def _hook(self, name):
        def hook(cell, inputs, output):
            for where, values in (("in", inputs), ("out", output if isinstance(output, tuple) else (output,))):
                for value in values:
                    if isinstance(value, ms.Tensor) and value.dtype in FLOATS and value.size >= self.min_size:
                        self.seen.append((name, where, value.dtype))
        return hook

    def not_half(self):
        return sorted({(n, w) for n, w, d in self.seen if d != ms.float16})

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def attention_calls(monkeypatch):
    """The dtypes of q, k, v of every attention call of the models."""
    calls = []
    original = attn_mod.attention

    def recording(q, k, v, *args, **kwargs):
        calls.append((q.dtype, k.dtype, v.dtype))
        return original(q, k, v, *args, **kwargs)

    import opensora.models.layers.blocks as blocks

    monkeypatch.setattr(blocks, "attention", recording)
    return calls


@pytest.mark.parametrize("version", ["STDiT", "STDiT2", "STDiT3"])
def test_stdit_dtype_flow_and_weights(version, attention_calls):
    net = build_tiny(version, dtype="fp16")
    params = list(net.get_parameters())
    assert params and all(p.dtype == ms.float16 for p in params), "weights are held in the model dtype"
    inputs = tiny_inputs(version, x_mask=version != "STDiT")
    batch, _, t, h, w = inputs["x"].shape
    tokens = batch * t * (h // 2) * (w // 2) * net.hidden_size  # one (B, T, S, C) activation
    recorder = _DtypeRecorder(net, tokens)
    try:
        out = net(**inputs)
    finally:
        recorder.remove()
    blocks = [n for n, w, _ in recorder.seen if n.count(".") == 1 and "blocks." in n]
    assert blocks, "the blocks were seen"
    assert recorder.not_half() == [], f"float32 token-size activations in: {recorder.not_half()[:8]}"
    assert attention_calls and all(d == (ms.float16,) * 3 for d in attention_calls), set(attention_calls)
    assert out.dtype == ms.float32  # upstream returns float32 (x.to(torch.float32) at the end)


def test_bf16_models_hold_bf16_weights():
    """bfloat16 cannot compute on the CPU, but a bf16 model is built with bf16 weights (half the bytes)."""
    for version in ("STDiT2", "STDiT3"):
        net = build_tiny(version, dtype="bf16")
        assert all(p.dtype == ms.bfloat16 for p in net.get_parameters())
    vae = VAES.build({"type": "OpenSoraVAE_V1_2", "vae_2d_config": TINY_SD_CONFIG,
                      "temporal_kwargs": TINY_TEMPORAL_KWARGS})
    from opensora.models.layers.precision import cast_parameters

    cast_parameters(vae, ms.bfloat16)
    assert all(p.dtype == ms.bfloat16 for p in vae.get_parameters())


def test_training_keeps_float32_master_weights():
    net = build_tiny("STDiT3", dtype="fp16", weights_dtype="float32", train=True)
    assert all(p.dtype == ms.float32 for p in net.get_parameters())
    out = net(**tiny_inputs("STDiT3"))
    assert out.dtype == ms.float32


@pytest.mark.parametrize("version", ["STDiT", "STDiT2", "STDiT3"])
def test_stdit_fp16_parity_with_reference_half(version, tmp_path):
    ckpt, ref = tiny_checkpoint(version, str(tmp_path))
    net = build_tiny(version, ckpt, dtype="fp16")
    ref = ref.half()
    inputs = tiny_inputs(version, as_numpy=True, x_mask=version != "STDiT")
    with torch.no_grad():
        expected = ref(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}).float().numpy()
    got = net(**{k: ms.Tensor(v) for k, v in inputs.items()}).asnumpy()
    err = _rel_l2(got, expected)
    print(f"{version} fp16: relative L2 {err:.2e}")
    assert np.isfinite(got).all() and err <= REL_L2


def _half_vae_inputs(seed, frames, size):
    return np.random.default_rng(seed).uniform(-1, 1, (1, 3, frames, size, size)).astype(np.float32)


def test_sd_vae_fp16_flow_and_parity(tmp_path):
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    from opensora.models.layers.precision import cast_parameters

    directory = make_sd_vae_dir(tmp_path / "sd", seed=2)
    vae = cast_parameters(VAES.build({"type": "VideoAutoencoderKL", "from_pretrained": directory}), ms.float16)
    ref = TorchAutoencoderKL.from_pretrained(directory).eval().half()
    z = np.random.default_rng(3).standard_normal((2, 4, 4, 6)).astype(np.float32)
    recorder = _DtypeRecorder(vae, 2 * 8 * 32 * 48)
    try:
        got = vae.module.decode(ms.Tensor(z).astype(ms.float16))
    finally:
        recorder.remove()
    assert got.dtype == ms.float16 and recorder.not_half() == [], recorder.not_half()[:8]
    with torch.no_grad():
        expected = ref.decode(torch.tensor(z).half()).sample.float().numpy()
    err = _rel_l2(got.astype(ms.float32).asnumpy(), expected)
    print(f"SD VAE fp16 decode: relative L2 {err:.2e}")
    assert err <= REL_L2


def test_v12_vae_fp16_flow_and_parity(tmp_path):
    from safetensors.torch import load_file

    from opensora.models.layers.precision import cast_parameters
    from tests.reference.vae_temporal_torch import VideoVAEPipelineTorch

    directory = make_opensora_vae_dir(tmp_path / "v12", seed=4)
    vae = cast_parameters(VAES.build({"type": "OpenSoraVAE_V1_2", "from_pretrained": directory}), ms.float16)
    assert all(p.dtype == ms.float16 for p in vae.get_parameters())
    state = {k: v.half() for k, v in load_file(f"{directory}/model.safetensors").items()}
    ref = VideoVAEPipelineTorch(state, TINY_SD_CONFIG, TINY_TEMPORAL_KWARGS, 17)
    ref.spatial = ref.spatial.half()
    z = np.random.default_rng(5).standard_normal((1, 4, 5, 2, 2)).astype(np.float32)
    recorder = _DtypeRecorder(vae, 17 * 8 * 16 * 16)
    try:
        got = vae.decode(ms.Tensor(z).astype(ms.float16), num_frames=17)
    finally:
        recorder.remove()
    assert got.dtype == ms.float16 and recorder.not_half() == [], recorder.not_half()[:8]
    with torch.no_grad():
        expected = ref.spatial_decode(ref.temporal_decode(torch.tensor(z).half(), 17)).float().numpy()
    err = _rel_l2(got.astype(ms.float32).asnumpy(), expected)
    print(f"1.2 VAE fp16 decode: relative L2 {err:.2e}")
    assert err <= REL_L2


# ---------------------------------------------------------------- the flash / math choice, per call
@pytest.fixture
def ascend_flash(monkeypatch):
    """Build cells as on Ascend (flash attention available) and record the kernel's calls (a numpy model of
    ops.flash_attention_score, as tests/test_attention_flash.py)."""
    from tests.test_attention_flash import CALLS, _kernel_reference

    monkeypatch.setattr(attn_mod, "_flash_kernel", _kernel_reference)
    monkeypatch.setattr(forms, "_backend", "Ascend")
    CALLS.clear()
    yield CALLS
    CALLS.clear()


def test_flash_only_when_the_sequence_is_longer_than_the_batch(ascend_flash):
    ms.set_seed(0)
    attn = Attention(32, num_heads=4, qkv_bias=True, qk_norm=True, enable_flash_attn=True)
    assert attn.use_flash
    rng = np.random.default_rng(0)
    long_seq = ms.Tensor(rng.standard_normal((2, 9, 32)), ms.float16)  # N=9 > B=2: flash (upstream)
    attn(long_seq)
    assert len(ascend_flash) == 1
    short_seq = ms.Tensor(rng.standard_normal((9, 2, 32)), ms.float16)  # N=2 <= B=9: math
    attn(short_seq)
    assert len(ascend_flash) == 1
    frames = ms.Tensor(rng.standard_normal((1, 3, 8, 32)), ms.float16)  # temporal: 3 frames, batch 8 positions
    attn.over_frames(frames)
    assert len(ascend_flash) == 1
    attn(long_seq.astype(ms.float32))  # float32: upstream's flash-attn refuses it; the math path runs
    assert len(ascend_flash) == 1


def test_flash_keeps_the_model_dtype(ascend_flash, monkeypatch):
    """The flash kernel gets the model's half precision as it is (bf16 stays bf16, never cast to fp16)."""
    seen = []
    from tests.test_attention_flash import _kernel_reference

    def kernel(q, k, v, *args):
        seen.append((q.dtype, k.dtype, v.dtype))
        return _kernel_reference(q, k, v, *args).astype(q.dtype)

    monkeypatch.setattr(attn_mod, "_flash_kernel", kernel)
    cross = MultiHeadCrossAttention(32, 4, enable_flash_attn=True)
    rng = np.random.default_rng(1)
    q = ms.Tensor(rng.standard_normal((2, 4, 5, 8)), ms.bfloat16)
    kv = ms.Tensor(rng.standard_normal((2, 4, 7, 8)), ms.bfloat16)
    out = attn_mod.attention(q, kv, kv, None, 0.3, use_flash=True)
    assert seen == [(ms.bfloat16,) * 3] and out.dtype == ms.bfloat16
    assert cross.use_flash


# ---------------------------------------------------------------- mixed-precision training
from tests.test_train_loop import made_data  # noqa: E402,F401  (the tiny training data, shared fixture)


def test_fp16_training_with_dynamic_loss_scaling(made_data, tmp_path):  # noqa: F811
    """fp16 compute with float32 master weights and AdamW state, dynamic loss scaling: the loss falls, a step
    whose scaled gradients overflow is skipped (the weights do not move) and the scale halves; checkpoints hold
    float32 weights unless save_dtype asks otherwise."""
    from opensora.utils.checkpoint import read_checkpoint
    from tests.test_train_loop import trainer_for

    steps = 24
    trainer = trainer_for([*made_data["cached"], "--max_steps", str(steps), "--ckpt_every", "100", "--lr", "3e-3",
                           "--batch_size", "2", "--dtype", "fp16", "--loss_scaler_type", "dynamic",
                           "--init_loss_scale", "1024", "--save_dtype", "fp16", "--outputs", str(tmp_path / "run")])
    assert all(p.dtype == ms.float32 for p in trainer.model.get_parameters())
    assert trainer.model.dtype == ms.float16
    losses = trainer.fit()
    first, last = np.mean(losses[:5]), np.mean(losses[-8:])
    print(f"\nfp16 training: loss first 5 steps {first:.3f}, last 8 steps {last:.3f}")
    assert all(np.isfinite(losses)) and last < 0.7 * first, losses
    assert all(p.dtype == ms.float32 for p in trainer.model.get_parameters())
    assert all(p.dtype == ms.float32 for p in trainer.optimizer.state_parameters() if p.dtype != ms.int32)

    # inject an overflow: a loss scale that float16 gradients cannot hold
    before = {p.name: p.asnumpy() for p in trainer.model.trainable_params()}
    trainer.scaler.scale_value.set_data(ms.Tensor(2.0 ** 40, ms.float32))
    trainer.opts.max_steps = steps + 1
    trainer.fit()
    assert float(trainer.scaler.scale_value.asnumpy()) == 2.0 ** 39, "the scale halves"
    after = {p.name: p.asnumpy() for p in trainer.model.trainable_params()}
    assert all(np.array_equal(before[n], after[n]) for n in before), "the overflowed step is skipped"
    saved = read_checkpoint(f"{trainer.save()}/model.ckpt")
    assert {str(v.dtype) for v in saved.values()} == {"Float16"}  # save_dtype fp16
