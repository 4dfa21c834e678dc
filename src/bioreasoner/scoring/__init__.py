"""Scoring family: judges, rewards, the pass rule and eval metrics."""
