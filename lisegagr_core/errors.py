"""Exception types the library raises on purpose, so callers can tell them from bugs."""


class LisegagrError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(LisegagrError):
    """Bad user input; the message is one sentence naming the file and the problem."""


class TransientError(LisegagrError):
    """A failure that may pass when tried again (a storage service or network hiccup)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without its full stop (its class name when it
    has no message): the cause, short enough for a one-sentence error."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else exc.__class__.__name__
