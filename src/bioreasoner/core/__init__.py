"""Core family: io, record schemas, typed params, text and safety helpers, response parsing, lineage.

Every stage depends on this package; it imports nothing heavier than pydantic and yaml."""
