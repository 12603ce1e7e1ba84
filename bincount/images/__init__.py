"""Bin photos as model input: safe decoding, the image cache and its shards, device decoding and
read-ahead.
"""
