"""Attune flows: the composition root, configuration and the `attune` CLI."""
