"""Compression criteria (numpy)."""
