"""PyTorch models, training, evaluation and export."""
