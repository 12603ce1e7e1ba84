"""Test support shared by the tests and the benchmarks: a real S3 endpoint and a faulty network.

``s3server`` runs the moto server as a subprocess and fills buckets; ``faultproxy`` puts a
delaying, fault-injecting HTTP proxy in front of it. Neither is imported by the library itself,
and moto is only ever started as a program, never imported.
"""
