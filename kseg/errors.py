"""Errors a user can act on. The CLI prints their message without a traceback."""


class KsegError(Exception):
    """Base class: the message names the file or argument and what to do."""


class ConfigError(KsegError):
    """A config file or override is invalid."""


class DataError(KsegError):
    """A dataset file is missing, unreadable or inconsistent."""


class ModelFileError(KsegError):
    """A model file is missing, corrupt or not a kseg model."""
