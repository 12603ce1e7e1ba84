"""From bucket to labels: metadata parsing, incremental ingest, contract validation and the
versioned manifest.
"""
