# Metadata lives in setup.cfg; this shim lets `pip install -e .` work with older pips.
from setuptools import setup

setup()
