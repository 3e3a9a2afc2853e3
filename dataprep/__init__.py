"""Data preparation: read sources, validate rows against the feature schema, quarantine, split, profile."""
