"""Where the scaler's facts come from and where it acts: the CodaLab client and the backends.

Each backend is one package under ``backends/`` that imports no other
backend; all of them build on the pure core only.
"""
