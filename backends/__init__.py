"""Framework adapters. Only code under this package imports torch or tensorflow."""
