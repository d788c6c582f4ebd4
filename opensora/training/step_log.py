"""Per-step training log: a csv in the output folder, a progress bar and a periodic log line (rank 0).

Columns: step, epoch, loss, lr, step_time_s, samples_per_s (global: all ranks), loss_scale, grad_norm,
finite. On resume, rows of steps after the checkpoint are dropped first (they are redone).
"""
from __future__ import annotations

import csv
import logging
import os

from ..utils.files import atomic_write

logger = logging.getLogger(__name__)

COLUMNS = ("step", "epoch", "loss", "lr", "step_time_s", "samples_per_s", "loss_scale", "grad_norm", "finite")


def read_log(path: str) -> list[dict]:
    with open(path, "r", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


class StepLogger:
    def __init__(self, output_dir: str, total_steps: int, start_step: int = 0, enabled: bool = True,
                 log_interval: int = 1, progress_bar: bool = True):
        self.enabled = enabled
        self.log_interval = max(1, int(log_interval))
        self.path = os.path.join(output_dir, "train_log.csv")
        self.bar = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        rows = [r for r in read_log(self.path) if int(r["step"]) <= start_step] if (
            start_step > 0 and os.path.isfile(self.path)) else []
        with atomic_write(self.path) as tmp:  # the rows kept on resume replace the file in one rename
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        self._file = open(self.path, "a", encoding="utf-8", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, **row) -> None:
        if not self.enabled:
            return
        self._writer.writerow({k: row.get(k) for k in COLUMNS})
        self._file.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", sps=f"{row['samples_per_s']:.2f}")
        if row["step"] % self.log_interval == 0:
            logger.info("step %d epoch %d loss %.5f lr %.3e step %.3fs %.2f samples/s loss_scale %g grad_norm %.4f%s",
                        row["step"], row["epoch"], row["loss"], row["lr"], row["step_time_s"], row["samples_per_s"],
                        row["loss_scale"], row["grad_norm"], "" if row["finite"] else " (overflow: step skipped)")

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.bar is not None:
                self.bar.close()
