"""ingest: raw files (the demo corpus or a user's own) -> one record per document."""
