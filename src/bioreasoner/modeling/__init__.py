"""Modeling family: loading and saving models, the tiny base, seeded batched sampling."""
