"""The review queue: ranking bins whose record disagrees with the photo, the queue table, and
reviewers' verdicts.
"""
