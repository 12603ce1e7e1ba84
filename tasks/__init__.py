"""Thin Prefect task wrappers over :mod:`bincount`: retries, caching, logging and artifacts."""
