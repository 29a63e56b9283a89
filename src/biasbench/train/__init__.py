"""Training: the method-agnostic loop with checkpoints and exact resume, optimizers."""
