"""Attune benchmarks: each prints a table (and can write JSON) with a same-run baseline."""
