"""quality: PII masking, language ID, heuristic filters and a fastText quality classifier."""
