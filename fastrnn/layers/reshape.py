"""Shape layers: Identity (Dropout, Keras InputLayer glue), Flatten, Reshape, Permute,
RepeatVector (one-to-many decoders), Select (one index of an axis, e.g. the last time step
``out[:, -1]``) and Slice. Shapes exclude the batch axis; axes in configs count the batch (0)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Layer, check_axis

f32 = np.float32


@dataclass(repr=False)
class Identity(Layer):
    """y = x (Dropout and friends at inference; a pass removes it from the execution plan)."""

    name: str = "identity"

    kind = "identity"
    per_step = True
    mask_rule = "keep"

    def output_shape(self, shapes):
        return tuple(shapes[0])

    def call(self, inputs, lengths=None):
        return inputs[0]

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(name)


@dataclass(repr=False)
class Flatten(Layer):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...)."""

    name: str = "flatten"

    kind = "flatten"

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        return (None if None in shape else int(np.prod(shape, dtype=np.int64)),)

    def call(self, inputs, lengths=None):
        x = np.asarray(inputs[0], f32)
        return x.reshape(x.shape[0], -1)

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(name)


@dataclass(repr=False)
class Reshape(Layer):
    """(B, ...) -> (B, *target_shape); one entry may be -1 (inferred)."""

    target_shape: tuple = ()
    name: str = "reshape"

    kind = "reshape"

    def __post_init__(self):
        self.target_shape = tuple(int(s) for s in self.target_shape)
        if sum(s == -1 for s in self.target_shape) > 1 or any(s < -1 for s in self.target_shape):
            raise ValueError(f"{self.name} (Reshape): target_shape {self.target_shape} may hold one -1 and sizes >= 0")

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if -1 not in self.target_shape:
            if None not in shape and np.prod(shape, dtype=np.int64) != np.prod(self.target_shape, dtype=np.int64):
                raise ValueError(f"{self.name} (Reshape): cannot reshape {shape} to {self.target_shape}")
            return self.target_shape
        if None in shape:
            return tuple(None if s == -1 else s for s in self.target_shape)
        known = int(np.prod([s for s in self.target_shape if s != -1], dtype=np.int64))
        total = int(np.prod(shape, dtype=np.int64))
        if known == 0 or total % known:
            raise ValueError(f"{self.name} (Reshape): cannot reshape {shape} to {self.target_shape}")
        return tuple(total // known if s == -1 else s for s in self.target_shape)

    def call(self, inputs, lengths=None):
        x = np.asarray(inputs[0], f32)
        return x.reshape((x.shape[0],) + self.target_shape)

    def config(self):
        return {"target_shape": list(self.target_shape)}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(tuple(config.int_list("target_shape", [], minimum=-1)), name)


@dataclass(repr=False)
class Permute(Layer):
    """Keras Permute: ``dims`` is a permutation of 1..n (the batch axis stays first)."""

    dims: tuple = (2, 1)
    name: str = "permute"

    kind = "permute"

    def __post_init__(self):
        self.dims = tuple(int(d) for d in self.dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ValueError(f"{self.name} (Permute): dims {self.dims} is not a permutation of 1..{len(self.dims)}")

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) != len(self.dims):
            raise ValueError(f"{self.name} (Permute): dims {self.dims} do not fit an input of shape {shape}")
        return tuple(shape[d - 1] for d in self.dims)

    def call(self, inputs, lengths=None):
        return np.ascontiguousarray(np.transpose(np.asarray(inputs[0], f32), (0,) + self.dims))

    def config(self):
        return {"dims": list(self.dims)}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(tuple(config.int_list("dims", [2, 1], minimum=1)), name)


@dataclass(repr=False)
class RepeatVector(Layer):
    """(B, F) -> (B, n, F): the same vector at every step (one-to-many decoders)."""

    n: int = 1
    name: str = "repeat_vector"

    kind = "repeat_vector"

    def __post_init__(self):
        if int(self.n) < 1:
            raise ValueError(f"{self.name} (RepeatVector): n must be >= 1, got {self.n}")
        self.n = int(self.n)

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) != 1:
            raise ValueError(f"{self.name} (RepeatVector) needs (B, features) inputs, gets {shape}")
        return (self.n, shape[0])

    def call(self, inputs, lengths=None):
        x = np.asarray(inputs[0], f32)
        return np.ascontiguousarray(np.repeat(x[:, None, :], self.n, axis=1))

    def config(self):
        return {"n": self.n}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.int("n", 1, minimum=1), name)


@dataclass(repr=False)
class Select(Layer):
    """x[:, ..., index, ...] on ``axis`` (batch-major, axis >= 1), the axis removed; e.g. the last
    step of a sequence (axis 1, index -1), as PyTorch classifiers take ``out[:, -1]``."""

    axis: int = 1
    index: int = -1
    name: str = "select"

    kind = "select"

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        ax = check_axis(self.axis, len(shape) + 1, self.name)
        if ax == 0:
            raise ValueError(f"{self.name} (Select): cannot select on the batch axis")
        size = shape[ax - 1]
        if size is not None and not -size <= self.index < size:
            raise ValueError(f"{self.name} (Select): index {self.index} is out of range for size {size}")
        return shape[:ax - 1] + shape[ax:]

    def call(self, inputs, lengths=None):
        x = np.asarray(inputs[0], f32)
        return np.ascontiguousarray(np.take(x, self.index, axis=self.axis))

    def config(self):
        return {"axis": self.axis, "index": self.index}

    @classmethod
    def from_config(cls, name, config, arrays):
        return cls(config.int("axis", 1, minimum=-64), config.int("index", -1, minimum=-(2 ** 62)), name)


@dataclass(repr=False)
class Slice(Layer):
    """x[..., start:stop:step, ...] on ``axis`` (batch-major, axis >= 1); None = open end."""

    axis: int = 1
    start: object = None
    stop: object = None
    step: int = 1
    name: str = "slice"

    kind = "slice"

    def __post_init__(self):
        if int(self.step) == 0:
            raise ValueError(f"{self.name} (Slice): step must not be 0")

    def output_shape(self, shapes):
        shape = tuple(shapes[0])
        ax = check_axis(self.axis, len(shape) + 1, self.name)
        if ax == 0:
            raise ValueError(f"{self.name} (Slice): cannot slice the batch axis")
        size = shape[ax - 1]
        n = None if size is None else len(range(*slice(self.start, self.stop, self.step).indices(size)))
        return shape[:ax - 1] + (n,) + shape[ax:]

    def output_lengths(self, lengths, shapes):
        return None

    def call(self, inputs, lengths=None):
        x = np.asarray(inputs[0], f32)
        index = [slice(None)] * x.ndim
        index[self.axis] = slice(self.start, self.stop, self.step)
        return np.ascontiguousarray(x[tuple(index)])

    def config(self):
        return {"axis": self.axis, "start": self.start, "stop": self.stop, "step": self.step}

    @classmethod
    def from_config(cls, name, config, arrays):
        big = -(2 ** 62)
        return cls(config.int("axis", 1, minimum=-64), config.int_or_none("start", None, minimum=big),
                   config.int_or_none("stop", None, minimum=big), config.int("step", 1, minimum=big), name)
