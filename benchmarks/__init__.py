"""Benchmarks, run on demand; each writes its results to a file (see ``report``)."""
