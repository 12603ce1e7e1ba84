"""Reviewed data files: a Parquet schema for every table bincount writes, and expectation suites.

Loaded only through :mod:`bincount.core.contracts`.
"""
