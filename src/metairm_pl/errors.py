"""Errors that are reported to the user as one readable paragraph, without a traceback."""


class UserError(Exception):
    """Base for errors caused by the user's input (config, data files, paths)."""


class ConfigError(UserError, ValueError):
    """A config value is invalid: the message names the value and what is allowed."""


class DataUnavailableError(UserError, FileNotFoundError):
    """Required data is missing and could not be fetched or provisioned."""


class DataCorruptedError(UserError, ValueError):
    """A data file exists but its contents fail verification (checksum, shape, format)."""
