"""An lmforge stage shipped by its own package (see docs/writing-a-stage.md)."""
