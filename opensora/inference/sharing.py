"""What the 1.x and 2.0 pipelines share for the web app: the progress hook and the check that a request can use
models another pipeline built (each request is a new pipeline over the models loaded once)."""
from __future__ import annotations

from ..config import ConfigError


def check_models_match(keys, cfg, loaded_cfg) -> None:
    """A request may change sizes, steps, guidance and prompts, not what the loaded models were built from."""
    changed = [k for k in keys if cfg.get(k) != loaded_cfg.get(k)]
    if changed:
        raise ConfigError(f"{', '.join(changed)}: the loaded models were built with other values; "
                          "restart with them to change them")


class ProgressHook:
    """``on_progress(stage, done, total)``, called after each sampler step and around decoding (the web app's
    progress bar and Cancel: raising in it stops the run there); None: a tqdm bar with ``--verbose 2``."""

    on_progress = None

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total)

    def _step_progress(self, stage: str = "sampling"):
        """What a sampler reports its steps to: the progress hook, else a tqdm bar with --verbose 2."""
        if self.on_progress is None:
            return self.cfg.verbose >= 2
        return lambda done, total: self._report(stage, done, total)
