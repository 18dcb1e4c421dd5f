"""Exception types the library raises on purpose, so callers can tell them from bugs."""


class LisegagrError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(LisegagrError):
    """Bad user input; the message is one sentence naming the file and the problem."""


class TransientError(LisegagrError):
    """A failure that may pass when tried again (a storage service or network hiccup)."""
