"""The training engine: the loop, batches, precision and DDP wrapping, checkpoints, optimizers."""
