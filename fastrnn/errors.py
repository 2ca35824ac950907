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
