"""The study fixtures (tiny_facts, study_args) live in tests/conftest.py."""
