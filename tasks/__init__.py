"""Thin Prefect task wrappers over :mod:`bincount`: timeouts, caching, logging and artifacts."""
