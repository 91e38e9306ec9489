"""Helper scripts for the compose stack (`scripts/stack.py`), importable by the tests."""
