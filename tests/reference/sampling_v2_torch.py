"""Small PyTorch reference of Open-Sora 2.0's sampling (upstream ``main``: ``opensora/utils/sampling.py``,
``opensora/utils/inference.py``, ``opensora/datasets/aspect.py``), written from upstream's code line by
line for the parity tests, quirks included:

- ``get_schedule``: ``torch.linspace`` in float32, then ``time_shift`` with the Python-float alpha;
- ``I2VDenoiser.denoise``: the state tripled, ``[cond, cond, 0]`` conditioning, oscillation, the
  image-guidance ramp built on the swapped (W, H) shape (harmless: constant over space), the update
  ``img + (t_prev - t_curr) * pred`` in the model's dtype;
- the reference latent copied back into **batch item 0 only** after sampling (``copy_back_all=False``,
  upstream's behaviour; the port copies it into every item, see ``copy_back_all=True``).

Every model call uses upstream's keyword names: ``model(img=, img_ids=, txt=, txt_ids=, y_vec=, cond=,
timesteps=, guidance=)``. No einops: packing is written with reshape/permute.
"""
from __future__ import annotations

import math

import torch


# ------------------------------------------------------------------ aspect.py
ASPECT_RATIO_LD_LIST = ["2.39:1", "2:1", "16:9", "1.85:1", "9:16", "5:8", "3:2", "4:3", "1:1"]


def get_num_pexels_from_name(resolution):
    resolution = resolution.split("_")[0]
    if resolution.endswith("px"):
        size = int(resolution[:-2])
        return size * size
    if resolution.endswith("p"):
        size = int(resolution[:-1])
        return int(size * size / 9 * 16)
    raise ValueError(resolution)


def get_aspect_ratios_dict(total_pixels=256 * 256, training=True, D=16):
    aspect_ratios_dict, vertical = {}, {}
    for ratio in ASPECT_RATIO_LD_LIST:
        width_ratio, height_ratio = map(float, ratio.split(":"))
        width = int(math.sqrt(total_pixels * (width_ratio / height_ratio)) // D) * D
        height = int((total_pixels / width) // D) * D
        if training:
            diff = abs(height * width - total_pixels)
            for h, w in [(height - D, width), (height + D, width), (height, width - D), (height, width + D)]:
                if abs(h * w - total_pixels) < diff:
                    height, width = h, w
                    diff = abs(h * w - total_pixels)
        if (height, width) not in aspect_ratios_dict.values() or not training:
            aspect_ratios_dict[ratio] = (height, width)
            vertical[":".join(ratio.split(":")[::-1])] = (width, height)
    aspect_ratios_dict.update(vertical)
    return aspect_ratios_dict


def get_image_size(resolution, ar_ratio, training=True):
    ar_dict = get_aspect_ratios_dict(get_num_pexels_from_name(resolution), training)
    assert ar_ratio in ar_dict, f"Aspect ratio {ar_ratio} not found"
    return ar_dict[ar_ratio]


def sanitize_size(height, width):
    height = (height // 16 + (1 if height % 16 else 0)) * 16
    width = (width // 16 + (1 if width % 16 else 0)) * 16
    return height, width


# ------------------------------------------------------------------ prompts (inference.py)
def add_fps_info_to_text(text, fps=16):
    import re

    out = []
    for item in text:
        item = item.strip()
        if not item.endswith("."):
            item += "."
        if not re.search(r"\d+ FPS\.$", item):
            item = item + f" {fps} FPS."
        out.append(item)
    return out


def add_motion_score_to_text(text, motion_score):
    return [f"{t} {motion_score} motion score." for t in text]


# ------------------------------------------------------------------ schedule
def time_shift(alpha, t):
    return alpha * t / (1 + (alpha - 1) * t)


def get_res_lin_function(x1=256, y1=1, x2=4096, y2=3):
    m = (y2 - y1) / (x2 - x1)
    b = y1 - m * x1
    return lambda x: m * x + b


def get_schedule(num_steps, image_seq_len, num_frames, shift_alpha=None, base_shift=1, max_shift=3, shift=True):
    timesteps = torch.linspace(1, 0, num_steps + 1)
    if shift:
        if shift_alpha is None:
            shift_alpha = get_res_lin_function(y1=base_shift, y2=max_shift)(image_seq_len)
            shift_alpha *= math.sqrt(num_frames)
        timesteps = time_shift(shift_alpha, timesteps)
    return timesteps.tolist()


def get_oscillation_gs(guidance_scale, i, force_num=10):
    if i < force_num or (i >= force_num and i % 2 == 0):
        return guidance_scale
    return 1.0


# ------------------------------------------------------------------ packing and ids
def pack(x, patch_size=2):
    b, c, t, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 2, 3, 5, 1, 4, 6)
    return x.reshape(b, t * (h // p) * (w // p), c * p * p)


def unpack(x, height, width, num_frames, patch_size=2, D=16):
    h, w, p = math.ceil(height / D), math.ceil(width / D), patch_size
    b, _, d = x.shape
    c = d // (p * p)
    x = x.reshape(b, num_frames, h, w, c, p, p).permute(0, 4, 1, 2, 5, 3, 6)
    return x.reshape(b, c, num_frames, h * p, w * p)


def prepare_ids(img, txt_len, patch_size=2):
    """``prepare``'s ids for latent ``img`` (B, C, T, H, W) and ``txt_len`` text tokens: (img_ids, txt_ids)."""
    bs, c, t, h, w = img.shape
    img_ids = torch.zeros(t, h // patch_size, w // patch_size, 3)
    img_ids[..., 0] = img_ids[..., 0] + torch.arange(t)[:, None, None]
    img_ids[..., 1] = img_ids[..., 1] + torch.arange(h // patch_size)[None, :, None]
    img_ids[..., 2] = img_ids[..., 2] + torch.arange(w // patch_size)[None, None, :]
    img_ids = img_ids.reshape(1, -1, 3).repeat(bs, 1, 1)
    txt_ids = torch.zeros(bs, txt_len, 3)
    return img_ids, txt_ids


# ------------------------------------------------------------------ conditions
def prepare_inference_condition(z, mask_cond, ref_list=None, causal=True):
    B, C, T, H, W = z.shape
    masks = torch.zeros(B, 1, T, H, W)
    masked_z = torch.zeros(B, C, T, H, W)
    for i in range(B):
        ref = ref_list[i] if ref_list is not None else None
        if ref is not None and T > 1:
            if mask_cond == "i2v_head":
                masks[i, :, 0, :, :] = 1
                masked_z[i, :, 0, :, :] = ref[0][:, 0, :, :]
            elif mask_cond == "i2v_tail":
                masks[i, :, -1, :, :] = 1
                masked_z[i, :, -1, :, :] = ref[-1][:, -1, :, :]
            elif mask_cond in ("v2v_head", "v2v_head_easy"):
                k = (8 if mask_cond == "v2v_head" else 16) + int(causal)
                masks[i, :, :k, :, :] = 1
                masked_z[i, :, :k, :, :] = ref[0][:, :k, :, :]
            elif mask_cond in ("v2v_tail", "v2v_tail_easy"):
                k = (8 if mask_cond == "v2v_tail" else 16) + int(causal)
                masks[i, :, -k:, :, :] = 1
                masked_z[i, :, -k:, :, :] = ref[0][:, -k:, :, :]
            elif mask_cond == "i2v_loop":
                masks[i, :, 0, :, :] = 1
                masks[i, :, -1, :, :] = 1
                masked_z[i, :, 0, :, :] = ref[0][:, 0, :, :]
                masked_z[i, :, -1, :, :] = ref[-1][:, -1, :, :]
            else:
                assert mask_cond == "t2v", f"Unknown mask condition {mask_cond}"
    return masks.to(z.device, z.dtype), masked_z.to(z.device, z.dtype)


# ------------------------------------------------------------------ denoisers
def i2v_denoise(model, img, img_ids, txt, txt_ids, y_vec, timesteps, guidance, guidance_img, masks, masked_ref,
                text_osci=False, image_osci=False, scale_temporal_osci=False, patch_size=2):
    """``I2VDenoiser.denoise``: ``img``, ids, ``txt`` and ``y_vec`` of the tripled batch (3B)."""
    guidance_vec = torch.full((img.shape[0],), guidance, device=img.device, dtype=img.dtype)
    for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        t_vec = torch.full((img.shape[0],), t_curr, dtype=img.dtype, device=img.device)
        b, c, t, w, h = masked_ref.size()
        cond = pack(torch.cat((masks, masked_ref), dim=1), patch_size=patch_size)
        cond = torch.cat([cond, cond, torch.zeros_like(cond)], dim=0)
        cond_x = img[: len(img) // 3]
        img = torch.cat([cond_x, cond_x, cond_x], dim=0)
        pred = model(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y_vec=y_vec, cond=cond, timesteps=t_vec,
                     guidance=guidance_vec)
        text_gs = get_oscillation_gs(guidance, i) if text_osci else guidance
        image_gs = get_oscillation_gs(guidance_img, i) if image_osci else guidance_img
        cond_, uncond, uncond_2 = pred.chunk(3, dim=0)
        if image_gs > 1.0 and scale_temporal_osci:
            step_upper_image_gs = torch.linspace(image_gs, 1.0, len(timesteps))[i]
            image_gs = torch.linspace(1.0, step_upper_image_gs, t)[None, None, :, None, None].repeat(b, c, 1, h, w)
            image_gs = pack(image_gs, patch_size=patch_size).to(cond_.device, cond_.dtype)
        pred = uncond_2 + image_gs * (uncond - uncond_2) + text_gs * (cond_ - uncond)
        pred = torch.cat([pred, pred, pred], dim=0)
        img = img + (t_prev - t_curr) * pred
    return img[: len(img) // 3]


def distilled_denoise(model, img, img_ids, txt, txt_ids, y_vec, timesteps, guidance):
    guidance_vec = torch.full((img.shape[0],), guidance, device=img.device, dtype=img.dtype)
    for t_curr, t_prev in zip(timesteps[:-1], timesteps[1:]):
        t_vec = torch.full((img.shape[0],), t_curr, dtype=img.dtype, device=img.device)
        pred = model(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y_vec=y_vec, timesteps=t_vec,
                     guidance=guidance_vec)
        img = img + (t_prev - t_curr) * pred
    return img


@torch.no_grad()
def sample(model, z, txt, y_vec, neg_txt, neg_y_vec, cond_type="t2v", references=None, num_steps=12,
           guidance=7.5, guidance_img=3.0, text_osci=True, image_osci=True, scale_temporal_osci=True,
           flow_shift=None, shift=True, distilled=False, copy_back_all=False, patch_size=2):
    """``api_fn`` after the text encoders: ``z`` (B, C, T, H, W) noise, ``txt`` (B, L, D) and ``y_vec``
    (B, V) of the prompts, ``neg_*`` of the negative prompts, ``references[i]``: the encoded reference
    latents of sample i. -> the sampled latent (B, C, T, H, W)."""
    b, _, t, h, w = z.shape
    dtype = z.dtype  # prepare() casts the ids and embeddings to the noise's (the model's) dtype
    txt, y_vec, neg_txt, neg_y_vec = (v.to(dtype) for v in (txt, y_vec, neg_txt, neg_y_vec))
    timesteps = get_schedule(num_steps, (w * h) // patch_size ** 2, t, shift=shift, shift_alpha=flow_shift)
    if distilled:
        img_ids, txt_ids = prepare_ids(z, txt.shape[1], patch_size)
        x = distilled_denoise(model, pack(z, patch_size), img_ids.to(dtype), txt, txt_ids.to(dtype), y_vec, timesteps,
                              guidance)
        return unpack(x, h * 8, w * 8, t, patch_size)
    z3 = torch.cat([z, z, z], dim=0)
    img_ids, txt_ids = prepare_ids(z3, txt.shape[1], patch_size)
    masks, masked_ref = prepare_inference_condition(z, cond_type, ref_list=references or [None] * b)
    x = i2v_denoise(model, pack(z3, patch_size), img_ids.to(dtype), torch.cat([txt, neg_txt, neg_txt]),
                    txt_ids.to(dtype), torch.cat([y_vec, neg_y_vec, neg_y_vec]), timesteps, guidance, guidance_img,
                    masks, masked_ref, text_osci, image_osci, scale_temporal_osci and "i2v" in cond_type, patch_size)
    x = unpack(x, h * 8, w * 8, t, patch_size)
    for j in range(b) if copy_back_all else range(1):
        if cond_type == "i2v_head":
            x[j, :, :1] = references[j][0]
        elif cond_type == "i2v_tail":
            x[j, :, -1:] = references[j][0]
        elif cond_type == "i2v_loop":
            x[j, :, :1] = references[j][0]
            x[j, :, -1:] = references[j][1]
    return x
