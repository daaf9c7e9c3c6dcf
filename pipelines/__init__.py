"""lmforge pipelines: Prefect flows that chain the stages, the CLI, and pipeline configs."""
