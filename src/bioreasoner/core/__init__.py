"""Core family: reading and writing (io), record schemas, typed params, text helpers, lineage.

Every stage depends on this package; it imports nothing heavier than pydantic and yaml."""
