"""Drift and performance monitoring of served traffic, and alerts."""
