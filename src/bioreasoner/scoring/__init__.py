"""Scoring family: response parsing, judges, rewards, filter rules and eval metrics."""
