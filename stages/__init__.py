"""lmforge stages: one module per stage of a language model's life.

Each stage is a config model, pure core functions and the Ray code that runs them.
This package never imports Prefect or ``pipelines``: a stage runs on its own
(``python -m stages NAME``), so it can be tested, benchmarked and submitted as a
Ray job without an orchestrator.
"""
