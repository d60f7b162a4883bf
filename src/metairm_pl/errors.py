"""Errors that are reported to the user as one readable paragraph, without a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable, Optional

EXIT_USAGE = 2


class UserError(Exception):
    """Base for errors caused by the user's input (config, data files, paths)."""


class ConfigError(UserError, ValueError):
    """A config value is invalid: the message names the value and what is allowed."""


class DataUnavailableError(UserError, FileNotFoundError):
    """Required data is missing and could not be fetched or provisioned."""


class DataCorruptedError(UserError, ValueError):
    """A data file exists but its contents fail verification (checksum, shape, format)."""


class DivergenceError(UserError, RuntimeError):
    """A loss term or parameter became NaN/inf; the message names the step and the term."""


def user_error_in(error: BaseException) -> Optional[Exception]:
    """The user error behind ``error`` (Hydra wraps constructor errors), if any: one of ours,
    or an OmegaConf config error such as a missing mandatory value."""
    from omegaconf.errors import OmegaConfBaseException  # only when an error is being reported

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (UserError, OmegaConfBaseException)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def describe_failure(error: BaseException) -> str:
    """One line saying why a run failed: the user error's message (config, data, paths) when
    there is one, else the exception's type and message."""
    user_error = user_error_in(error)
    reason = str(user_error) if user_error is not None else f"{type(error).__name__}: {error}"
    return " ".join(reason.split())


def exits_on_user_error(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's ``main``: a :class:`UserError` prints ``error: <message>`` on stderr
    and returns :data:`EXIT_USAGE` instead of a traceback."""

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE

    return guarded
