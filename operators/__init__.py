"""Attune operators: the pure logic (codec, state, segments...) and thin Bytewax wrappers."""
