#!/usr/bin/env bash
# Three-stage sampling: each stage holds only its own model in memory.
#   (1) text embeddings      scripts/infer_t5.py        -> $OUT/text_embed/{index:04d}.npz (2.0: T5 + CLIP pooled,
#                                                          negative prompts in $OUT/text_embed/neg/)
#   (2) latent sampling      scripts/inference.py       (no text encoder, no VAE loaded) -> latents/*.npz
#   (3) VAE decoding         scripts/infer_vae_decode.py -> *.mp4 (same names and folder as the one-process script)
# Works for 1.0 / 1.1 (SD VAE), 1.2 (3D VAE) and 2.0 (a config with sampling_option: MMDiT + Hunyuan VAE);
# for the same seed the videos equal the one-process run's.
# Text-to-video only: references, loops and text-to-image-to-video need the VAE inside the sampling loop.
#
#   run_scripts/run_sample_3stages.sh CONFIG.yaml PROMPTS.txt OUT_DIR [extra inference.py flags...]
#   e.g. run_scripts/run_sample_3stages.sh configs/opensora-v1-2/inference/sample_t2v.yaml prompts.txt samples/3stage \
#            --ckpt_path models/OpenSora-STDiT-v3
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: $0 CONFIG.yaml PROMPTS.txt OUT_DIR [inference flags]}
PROMPTS=${2:?prompt file}
OUT=${3:?output folder}
shift 3
export GLOG_v=3
mkdir -p "$OUT"

# the text encoder and VAE settings of the config (weights, max length, random-init source), and its version
eval "$(python - "$CONFIG" "$@" <<'PY'
import json, shlex, sys
sys.path.insert(0, ".")
argv = ["--config", sys.argv[1], *sys.argv[2:]]
from opensora.inference.v2.options import is_v2_config
if is_v2_config(argv):
    from opensora.dtypes import canonical
    from opensora.inference.v2.components import resolved_section
    from opensora.inference.v2.options import parse_v2
    cfg = parse_v2(argv)
    dtype = canonical(cfg.dtype)
    sections = {k: resolved_section(k, cfg[k], cfg.random_weights_dir, dtype) for k in ("t5", "clip", "ae")}
    sub_dir = ("image" if int(cfg.sampling["num_frames"]) == 1 else "video") + (
        f"_{cfg.sampling['resolution']}" if cfg.sampling["resolution"] else "")
    print("V2=1")
    print(f"T5_CFG={shlex.quote(json.dumps(sections['t5']))}")
    print(f"CLIP_CFG={shlex.quote(json.dumps(sections['clip']))}")
    print(f"VAE_CFG={shlex.quote(json.dumps(sections['ae']))}")
    print(f"DTYPE={shlex.quote(cfg.dtype)}")
    print(f"SUB_DIR={shlex.quote(sub_dir)}")
else:
    from opensora.inference.options import inference_schema
    from opensora.inference.components import text_encoder_cfg, vae_cfg
    cfg = inference_schema().parse(argv)
    t5 = text_encoder_cfg(cfg.text_encoder, cfg.random_weights_dir)  # creates random tiny weights if asked
    vae = vae_cfg(cfg.vae, cfg.random_weights_dir)
    print("V2=0")
    print(f"T5_DIR={shlex.quote(str(t5['from_pretrained']))}")
    print(f"T5_LEN={int(t5.get('model_max_length', 120))}")
    print(f"VAE_CFG={shlex.quote(json.dumps(vae))}")  # the config's own VAE section, weights resolved
    print("SUB_DIR=.")
PY
)"

echo "== stage 1: text embeddings"
python scripts/inference.py --config "$CONFIG" --prompt-path "$PROMPTS" --write_prompts "$OUT/prompts_scored.txt" "$@"
if [ "$V2" = 1 ]; then
    python scripts/infer_t5.py --t5 "$T5_CFG" --clip "$CLIP_CFG" --dtype "$DTYPE" \
        --prompt_path "$OUT/prompts_scored.txt" --output_dir "$OUT/text_embed"
    python scripts/infer_t5.py --t5 "$T5_CFG" --clip "$CLIP_CFG" --dtype "$DTYPE" \
        --prompt_path "$OUT/prompts_scored.neg.txt" --empty_prompts true --output_dir "$OUT/text_embed/neg"
else
    python scripts/infer_t5.py --t5_model_dir "$T5_DIR" --model_max_length "$T5_LEN" \
        --prompt_path "$OUT/prompts_scored.txt" --output_dir "$OUT/text_embed"
fi

echo "== stage 2: latents"
python scripts/inference.py --config "$CONFIG" --prompt-path "$PROMPTS" --save-dir "$OUT" \
    --text_embed_folder "$OUT/text_embed" --no_vae_decode true "$@"

echo "== stage 3: decode"
python scripts/infer_vae_decode.py --latent_path "$OUT/$SUB_DIR/latents" --output_dir "$OUT/$SUB_DIR" --vae "$VAE_CFG"
echo "videos in $OUT/$SUB_DIR"
