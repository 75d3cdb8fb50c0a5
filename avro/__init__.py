"""Avro schemas of Attune: the single source of truth for every event and output."""
