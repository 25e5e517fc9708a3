"""Errors shared by the modules that parse, build and load models (a leaf module: it imports nothing, so
the zoo and the reference parser can both raise them without importing each other)."""


class ModelRefError(ValueError):
    """A model reference that names nothing loadable; the message says what was tried."""
