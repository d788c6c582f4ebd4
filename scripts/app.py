"""A local web app for generation: the models of one inference config load once, requests run one at a time.

    python scripts/app.py --config configs/tiny/inference/sample_t2v.yaml            # make app
    python scripts/app.py --config configs/opensora-v1-2/inference/sample_t2v.yaml --port 7860 \
        --save-dir samples/app --ckpt_path models/OpenSora-STDiT-v3
    python scripts/app.py --config configs/tiny/inference/sample_v2.yaml          # 2.0, tiny: make app-v2
    python scripts/app.py --config configs/opensora-v2/inference/t2i2v_256px.yaml --save-dir samples/app

Served on 127.0.0.1 only (no sharing, no network calls). Every flag after --config is an option of
scripts/inference.py and applies to every request (--save-dir, --ckpt_path, --dtype, ...); each result shows the
scripts/inference.py command line that makes the same file. Exit status as scripts/inference.py.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GLOG_v", "3")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (usage statistics, version check)

from opensora.utils.cli import run_main, script_main  # noqa: E402

HOST = "127.0.0.1"


@script_main
def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 [default: 7860]")
    parser.add_argument("--config", "-c", required=True, help="an inference config (configs/*/inference/*.yaml)")
    args, rest = parser.parse_known_args(argv)
    if not 1 <= args.port <= 65535:
        from opensora.config import ConfigError

        raise ConfigError(f"--port must be in [1, 65535], got {args.port}")
    from opensora.inference.app_handler import handler_for

    handler = handler_for(["--config", args.config, *rest])  # the config and flags checked before loading
    handler.load()
    from opensora.app.ui import build_page

    page = build_page(handler)
    print(f"Open-Sora app on http://{HOST}:{args.port} (Ctrl-C stops it)", flush=True)
    page.launch(server_name=HOST, server_port=args.port, share=False, inbrowser=False, show_error=False,
                allowed_paths=[os.path.abspath(handler.base.save_dir)], footer_links=[])
    return 0


if __name__ == "__main__":
    run_main(main)
