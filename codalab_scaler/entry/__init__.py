"""Entry points: the ``codalab-scaler`` command line and ``demo``."""
