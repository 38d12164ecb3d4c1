"""Synthetic heterogeneous hospital sites: a seeded generative model and per-format raw exports."""
