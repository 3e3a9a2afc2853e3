"""Hyperparameter search (`search`, Optuna) and cross-validation (`crossval`) over the training recipe."""
