"""The numpy side of each method, on graphs and canonical weights: ``cdc``, ``kse``,
``hinge``, ``dcff``, ``decompose``. They score and plan; every channel cut goes through
:mod:`compress_core.surgery`."""
