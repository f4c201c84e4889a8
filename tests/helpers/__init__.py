"""Helpers shared by the tests (plain functions and data, no fixtures: those are in ``tests/conftest.py``).
Test modules import from here, never from one another."""
