"""codalab-scaler: keeps a CodaLab Worksheets installation supplied with workers."""

__version__ = "0.1.0"
