"""Compression pipelines, run as ``python -m methods.<name> --backend tf|torch --config FILE``.

No module here imports a framework; backends are reached through backends.base.
"""
