"""Training: loss, mixed precision and loss scaling, clipping, data/optimizer parallel, EMA, checkpoints, logs."""
