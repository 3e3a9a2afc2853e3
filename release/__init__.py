"""A model after export, without PyTorch: the gate, registration, promotion and rollback, the model card,
BentoML's store and `loopline verify`, and the `loopline` command."""
