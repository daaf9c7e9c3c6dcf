"""Plumbing shared by every stage: the stage contract, implemented once."""
