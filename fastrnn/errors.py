"""Exceptions raised by fastrnn."""


class ModelFormatError(ValueError):
    """A model file or framework object cannot be read: names the source and the problem."""

    def __init__(self, message, source=None):
        self.source = None if source is None else str(source)
        super().__init__(f"{self.source}: {message}" if self.source else message)


class UnsupportedLayerError(ModelFormatError):
    """The model contains a layer or option fastrnn does not implement."""


class PaddingLengthWarning(UserWarning):
    """A model without a mask reads texts through a tokenizer, but the padding length it was
    trained with (pad_sequences' ``maxlen``) is unknown: its results depend on it."""


class InputError(ValueError):
    """One input of many (``classify``) cannot be used: ``position`` is its 0-based index among the
    inputs, ``reason`` why. The command line names its line number instead."""

    def __init__(self, position, reason):
        self.position, self.reason = int(position), str(reason)
        super().__init__(f"input {self.position}: {self.reason}")


class InputTooLongWarning(UserWarning):
    """``classify`` cut an input to ``max_length`` tokens (its last ones when ``from_end``: a model
    whose Keras tokenizer truncated at the front); ``position`` is its 0-based index."""

    def __init__(self, message, position, max_length, from_end=False):
        super().__init__(message)
        self.position, self.max_length, self.from_end = int(position), int(max_length), bool(from_end)


class KernelsMissingWarning(UserWarning):
    """``import fastrnn`` found no compiled kernels (a source checkout shadowing the installed
    package, say): models run on a slower backend."""
