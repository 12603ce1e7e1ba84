"""Prefect flows that read like the pipeline; one pipeline per module."""
