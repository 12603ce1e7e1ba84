"""The platform's foundations: settings, storage (local folders and S3), Parquet tables, data
contracts, the chunk protocol, sources and limits.
"""
