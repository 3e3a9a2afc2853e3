"""Prefect flows: thin orchestration over the stages and the core (training, monitoring, the loop)."""
