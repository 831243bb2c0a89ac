"""Errors medinterp raises for bad input: one class, messages that name the file, row and expectation."""


class MedinterpError(ValueError):
    """A user-facing error: the message says what was wrong and what was expected.

    The CLI prints these as one readable line instead of a traceback.
    """


class ConceptFileError(MedinterpError):
    """A concept or pairs file is malformed (the message names file, row and column)."""


class ModelLoadError(MedinterpError):
    """A model spec could not be resolved or its files could not be read."""


def clip(text: object, limit: int = 200) -> str:
    """``repr(text)`` cut to ``limit`` characters, so an error about a huge input stays one readable line.

    Example:
        >>> clip("x" * 1000, 20)
        "'xxxxxxxxxxxxxxxx… (1002 chars)"
        >>> clip("short")
        "'short'"
    """
    r = repr(text)
    return r if len(r) <= limit else f"{r[: limit - 3]}… ({len(r)} chars)"
