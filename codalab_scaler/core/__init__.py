"""The pure core: data, rules, sizes and the worker command line.

Imports no I/O library and nothing else of the package (import-linter
enforces it): every function here is a value in, a value out.
"""
