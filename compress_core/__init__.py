"""compress_core: framework-agnostic numpy core of the compression library.\n\nImports numpy/scipy/scikit-learn/tensorly only; never torch or tensorflow.\n"""
