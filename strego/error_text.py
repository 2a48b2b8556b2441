"""The text of an exception, for last_error and logs. An exception may come from user code: its
str() may raise (even SystemExit) or return something else than a string, so these never call it
unguarded."""

from __future__ import annotations


def exception_text(exc: BaseException) -> str:
    """`Type: message` (`Type` when the message is empty), for errors and logs; never raises."""
    name = _type_name(exc)
    message = _message(exc)
    if message is None:
        return f"<unprintable {name}>"
    return f"{name}: {message}" if message else name


def exception_message(exc: BaseException) -> str:
    """str(exc), or `<unprintable Type>`; never raises."""
    message = _message(exc)
    return f"<unprintable {_type_name(exc)}>" if message is None else message


def _message(exc: BaseException) -> str | None:
    """str(exc), None when it fails: an exception is user code, its str() may raise (even
    SystemExit) or return something else than a string. Lone surrogates are escaped so that
    the text can be stored as UTF-8."""
    try:
        message = str(exc)
        if not isinstance(message, str):
            return None
    except BaseException:
        return None
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _type_name(exc: BaseException) -> str:
    try:
        return str(type(exc).__name__)
    except BaseException:
        return "exception"
