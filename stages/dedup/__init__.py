"""dedup: exact, cross-corpus boilerplate and MinHash near-duplicate removal."""
