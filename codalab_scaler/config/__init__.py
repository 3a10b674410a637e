"""Settings: the models every setting is declared in once, and the one loader."""
