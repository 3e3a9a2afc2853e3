"""Errors that stop a stage with a message a person can act on."""


class LooplineError(Exception):
    """Base class: the message names the file, column, row or field and what is wrong."""


class ConfigError(LooplineError):
    """params.yaml is missing a setting or holds a value it cannot use."""


class SchemaError(LooplineError):
    """A feature schema file is malformed or contradicts itself."""


class DataError(LooplineError):
    """Source data cannot be used: missing columns, no rows, or too many invalid rows."""
