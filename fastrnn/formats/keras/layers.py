"""The table of layer translations: one function per Keras layer family, each making the fastrnn
layer(s) of one Keras layer entry from its config and weight arrays (``_CONVERTERS``; recurrent
layers and Bidirectional through ``_recurrent`` / ``_bidirectional``), and the activation names.
Keras's weight layouts become fastrnn's here (kernels transposed, GRU gates z|r|h -> r|z|n,
Keras 1 per-gate and cuDNN arrays converted as Keras 2's loader did): see the package docstring."""
from __future__ import annotations

import re

import numpy as np

from ...activations import Activation as ActivationFunction
from ...layers import (Activation, Attention, BatchNormalization, Concatenate, Conv1D, Dense, DirectionWeights, Dot,
                       Embedding, Flatten, GlobalPooling1D, Identity, LayerNormalization, Masking, Merge, Permute,
                       Pooling1D, Recurrent, RepeatVector, Reshape)
from ...layers.custom import call_factory
from ...layers.activation import FRAMEWORK_ACTIVATIONS
from .config import CUDNN_LAYERS, GATES, RECURRENT_CELLS, _entry

# Keras 1 merge(mode=...) -> fastrnn merge; "concat" is a Concatenate
KERAS1_MERGE_MODES = {"sum": "add", "mul": "multiply", "ave": "average", "max": "maximum"}
NO_OP_LAYERS = ("Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                "ActivityRegularization", "Identity")
MERGE_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
             "Maximum": "maximum", "Minimum": "minimum"}
SUPPORTED_LAYERS = (
    "InputLayer", "Embedding", "Masking", "Dense", "TimeDistributed(Dense and other per-step layers)",
    "SimpleRNN", "LSTM", "GRU", "CuDNNLSTM", "CuDNNGRU", "Bidirectional", "Activation", "Softmax", "ReLU",
    "LeakyReLU", "ELU",
    "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Dot",
    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "MaxPooling1D", "AveragePooling1D", "Conv1D", "Flatten",
    "Reshape", "Permute", "RepeatVector", "LayerNormalization", "BatchNormalization", "Attention",
    "AdditiveAttention", "Merge (Keras 1: mode concat, sum, mul, ave, max)", "Sequential / Functional (nested)"
) + NO_OP_LAYERS

# Keras activation name -> fastrnn activation name, for functions defined identically in both.
# hard_sigmoid is handled apart (its definition depends on the Keras version).
# Keras's element-wise activation names (fastrnn.layers.activation.FRAMEWORK_ACTIVATIONS, the table
# every importer shares, less the aten-only "exp")
_SAME_ACTIVATIONS = {k: v for k, v in FRAMEWORK_ACTIVATIONS.items() if k != "exp"}
# activations an Activation layer adds to the element-wise ones (softmax over the last axis)
_LAYER_ACTIVATIONS = {"softmax": "softmax", "log_softmax": "log_softmax", "gelu": "gelu"}
_DENSE_ACTIVATIONS = {"linear", "softmax", "sigmoid", "tanh", "relu", "elu", "selu", "softplus",
                      "softsign", "exponential", "swish", "silu"}


class _MissingLayer(Identity):
    """Placeholder for a custom layer without a factory (reported once, with all the others)."""

    def __init__(self, class_name, name):
        super().__init__(name)
        self.class_name = class_name


class _MissingCustom(Identity):
    """Placeholder for a custom activation function without a factory."""

    def __init__(self, function, name):
        super().__init__(name)
        self.function = function


def _take(ctx, entry, arrays, names):
    """Check the layer has exactly the arrays ``names`` (Keras weight order) and return them."""
    if len(arrays) != len(names):
        raise ctx.error(entry, f"expected {len(names)} weight arrays ({', '.join(names)}), the file has "
                               f"{len(arrays)}: {[n for n, _ in arrays]}")
    return [a for _, a in arrays]


def _activation_name(spec):
    """A Keras activation spec -> (name, builtin): builtin False for a user-defined function."""
    if spec is None:
        return "linear", True
    if isinstance(spec, dict):  # a serialized function: {"module": ..., "class_name": "function", "config": name}
        inner, module = spec.get("config"), str(spec.get("module") or "keras")
        registered = spec.get("registered_name")
        if isinstance(inner, str) and module.startswith("keras") and registered in (None, "function", inner):
            return inner, True
        name = registered if isinstance(registered, str) and registered not in ("function",) else inner
        return str(name), False
    name = str(spec)
    if name in _SAME_ACTIVATIONS or name in _LAYER_ACTIVATIONS or name in _EXTRA_KERAS or name == "hard_sigmoid":
        return name, True
    return name, False  # a name Keras does not define: a custom function (Keras 2 "<lambda>", "my_fn")


# Keras activations that fastrnn's Activation layer computes with other parameters
_EXTRA_KERAS = {"relu6": None, "leaky_relu": None, "hard_silu": None, "hard_swish": None}


def _keras_activation_layer(ctx, entry, spec, name):
    """An Activation layer computing Keras activation ``spec`` exactly as Keras defines it."""
    fname, builtin = _activation_name(spec)
    if not builtin:
        # Keras 3 stores a registered function as "package>name": either key finds the factory
        keys = [fname] + ([fname.split(">", 1)[1]] if re.fullmatch(r"[^<>]+>[^<>]+", fname) else [])
        key = next((k for k in keys if k in ctx.custom), None)
        if key is None:
            return _MissingCustom(keys[-1], name)
        fn = call_factory(lambda cfg, w: ctx.custom[key](key), key, {}, [], f"layer {entry['name']!r}")
        if not callable(fn):
            raise ctx.error(entry, f"custom_layers[{key!r}] returned {type(fn).__name__}, not a function")
        return Activation(key, name=name, custom=True, fn=fn)
    if fname == "linear":
        return Activation("identity", name=name)
    if fname == "hard_sigmoid":
        return Activation("hard_sigmoid", alpha=0.2 if ctx.legacy else 1.0 / 6.0, beta=0.5, name=name)
    if fname in _SAME_ACTIVATIONS:
        return Activation(_SAME_ACTIVATIONS[fname], name=name)
    if fname in _LAYER_ACTIVATIONS:
        return Activation(_LAYER_ACTIVATIONS[fname], name=name)
    if fname == "leaky_relu":  # keras.activations.leaky_relu: negative_slope 0.2
        return Activation("leaky_relu", alpha=0.2, name=name)
    known = sorted(set(_SAME_ACTIVATIONS) | set(_LAYER_ACTIVATIONS) | {"hard_sigmoid", "leaky_relu"})
    raise ctx.unsupported(entry, f"activation {fname!r} is not supported; fastrnn runs {known} or a custom "
                                 "function through custom_layers=")


def _activation(ctx, entry, spec, what):
    """A Keras activation (name) as a fastrnn activation function (inside recurrent cells)."""
    name, builtin = _activation_name(spec)
    if not builtin:
        raise ctx.unsupported(entry, f"{what} is the user-defined function {name!r}; fastrnn's recurrent kernels "
                                     f"run {sorted(set(_SAME_ACTIVATIONS) | {'hard_sigmoid'})}")
    if name == "hard_sigmoid":
        # Keras 3: relu6(x + 3) / 6 = clip(x/6 + 0.5); Keras 1/2: clip(0.2x + 0.5)
        return ActivationFunction("hard_sigmoid", 0.2 if ctx.legacy else 1.0 / 6.0, 0.5)
    if name in _SAME_ACTIVATIONS:
        return ActivationFunction.of(_SAME_ACTIVATIONS[name])
    raise ctx.unsupported(entry, f"{what} {name!r} is not supported; fastrnn runs "
                                 f"{sorted(set(_SAME_ACTIVATIONS) | {'hard_sigmoid'})}")


def _with_activation(ctx, e, layer, spec):
    """``layer`` (computing a linear map) followed by Keras activation ``spec``: one layer when the
    activation is linear, else (layer, Activation)."""
    act = _keras_activation_layer(ctx, e, spec, f"{e['name']}/activation")
    if isinstance(act, Activation) and not act.custom and act.function == "identity":
        return layer
    return (layer, act)


def _embedding(ctx, e, cfg, weights, kw):
    (table,) = _take(ctx, e, weights.arrays(e), ["embeddings"])
    if table.ndim != 2 or ("input_dim" in cfg and table.shape[0] != int(cfg["input_dim"])):
        raise ctx.error(e, f"embeddings have shape {table.shape}, config says ({cfg.get('input_dim')}, "
                           f"{cfg.get('output_dim')})")
    return Embedding(table, mask_zero=bool(cfg.get("mask_zero", False)), name=e["name"])


def _masking(ctx, e, cfg, weights, kw):
    return Masking(float(cfg.get("mask_value", 0.0)), name=e["name"])


def _dense(ctx, e, cfg, weights, kw):
    """Dense (or the Dense inside TimeDistributed): kernel (I, U) -> weight (U, I)."""
    use_bias = bool(cfg.get("use_bias", True))
    got = _take(ctx, e, weights.arrays(e), ["kernel", "bias"] if use_bias else ["kernel"])
    kernel, bias = got[0], (got[1] if use_bias else None)
    units = int(cfg.get("units", kernel.shape[-1]))
    if kernel.ndim != 2 or kernel.shape[1] != units or (bias is not None and bias.shape != (units,)):
        raise ctx.error(e, f"kernel {kernel.shape} / bias {None if bias is None else bias.shape} do not match "
                           f"units={units}")
    spec = cfg.get("activation", "linear")
    name, builtin = _activation_name(spec)
    if builtin and name in _DENSE_ACTIVATIONS and not (name == "hard_sigmoid" and ctx.legacy):
        return Dense(kernel.T, bias, name, name=e["name"])
    if builtin and name == "hard_sigmoid" and not ctx.legacy:
        return Dense(kernel.T, bias, "hard_sigmoid", name=e["name"])
    return _with_activation(ctx, e, Dense(kernel.T, bias, "linear", name=e["name"]), spec)


def _no_op(ctx, e, cfg, weights, kw):
    return Identity(name=e["name"])


def _activation_layer(ctx, e, cfg, weights, kw):
    act = _keras_activation_layer(ctx, e, cfg.get("activation", "linear"), e["name"])
    return act


def _softmax_layer(ctx, e, cfg, weights, kw):
    axis = cfg.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise ctx.unsupported(e, f"softmax over several axes {axis} is not supported")
        axis = axis[0]
    return Activation("softmax", axis=int(axis), name=e["name"])


def _relu_layer(ctx, e, cfg, weights, kw):
    max_value = cfg.get("max_value")
    slope = float(cfg.get("negative_slope", 0.0) or 0.0)
    threshold = float(cfg.get("threshold", 0.0) or 0.0)
    if max_value is not None or threshold != 0.0:
        raise ctx.unsupported(e, "ReLU with max_value or threshold is not supported")
    if slope:
        return Activation("leaky_relu", alpha=slope, name=e["name"])
    return Activation("relu", name=e["name"])


def _leaky_relu_layer(ctx, e, cfg, weights, kw):
    slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
    return Activation("leaky_relu", alpha=float(slope), name=e["name"])


def _elu_layer(ctx, e, cfg, weights, kw):
    return Activation("elu", alpha=float(cfg.get("alpha", 1.0)), name=e["name"])


def _merge_mask_rule(ctx):
    """Keras 3 ORs the masks of a merge's inputs; Keras 1 and 2 took the AND of the masks present
    (``_Merge.compute_mask``: ``K.all`` over them) and merged the values as they are."""
    return "and" if ctx.legacy else "or"


def _concatenate(ctx, e, cfg, weights, kw):
    return Concatenate(int(cfg.get("axis", -1)), name=e["name"], mask_rule=_merge_mask_rule(ctx))


def _merge(ctx, e, cfg, weights, kw):
    return Merge(MERGE_OPS[e.get("inner_class", e["class_name"])], name=e["name"], mask_rule=_merge_mask_rule(ctx))


def _keras1_merge(ctx, e, cfg, weights, kw):
    """Keras 1's ``merge(..., mode=...)`` layer."""
    if cfg.get("layers"):
        raise ctx.unsupported(e, "a Keras 1 Merge of whole models inside a Sequential model is not supported; "
                                 "rebuild it as a functional model (Concatenate / Add / ...) with the same weights")
    mode = cfg.get("mode", "sum")
    if not isinstance(mode, str):
        raise ctx.unsupported(e, "a Keras 1 Merge with a Python function as mode is never run; pass "
                                 "custom_layers={'Merge': factory}")
    if mode == "concat":
        return Concatenate(int(cfg.get("concat_axis", -1)), name=e["name"], mask_rule=_merge_mask_rule(ctx))
    if mode in KERAS1_MERGE_MODES:
        return Merge(KERAS1_MERGE_MODES[mode], name=e["name"], mask_rule=_merge_mask_rule(ctx))
    raise ctx.unsupported(e, f"Keras 1 Merge mode {mode!r} is not supported; fastrnn reads modes concat, "
                             f"{', '.join(KERAS1_MERGE_MODES)}")


def _dot(ctx, e, cfg, weights, kw):
    axes = cfg.get("axes", -1)
    return Dot(tuple(axes) if isinstance(axes, list) else int(axes), bool(cfg.get("normalize", False)), name=e["name"])


def _channels_last(ctx, e, cfg):
    if cfg.get("data_format", "channels_last") not in ("channels_last", None):
        raise ctx.unsupported(e, f"data_format={cfg.get('data_format')!r} is not supported (channels_last only)")


def _one(ctx, e, value, what):
    if isinstance(value, list):
        if len(value) != 1:
            raise ctx.error(e, f"{what} {value} is not one integer")
        value = value[0]
    return int(value)


def _global_pooling(ctx, e, cfg, weights, kw):
    _channels_last(ctx, e, cfg)
    cls = e.get("inner_class", e["class_name"])
    return GlobalPooling1D("average" if "Average" in cls else "max", bool(cfg.get("keepdims", False)), True,
                           name=e["name"])


def _pooling(ctx, e, cfg, weights, kw):
    _channels_last(ctx, e, cfg)
    cls = e.get("inner_class", e["class_name"])
    pool = _one(ctx, e, cfg.get("pool_size", 2), "pool_size")
    strides = cfg.get("strides")
    strides = pool if strides is None else _one(ctx, e, strides, "strides")
    return Pooling1D("max" if cls.startswith("Max") else "average", pool, strides, str(cfg.get("padding", "valid")),
                     name=e["name"])


def _conv1d(ctx, e, cfg, weights, kw):
    if "nb_filter" in cfg:
        raise ctx.unsupported(e, "a Keras 1 Convolution1D (nb_filter, filter_length: its kernel is stored in "
                                 "another layout) is not supported; rebuild it as a Keras 2 Conv1D")
    _channels_last(ctx, e, cfg)
    if int(cfg.get("groups", 1)) != 1:
        raise ctx.unsupported(e, "grouped convolutions (groups > 1) are not supported")
    use_bias = bool(cfg.get("use_bias", True))
    got = _take(ctx, e, weights.arrays(e), ["kernel", "bias"] if use_bias else ["kernel"])
    kernel = got[0]
    if kernel.ndim != 3:
        raise ctx.error(e, f"kernel has shape {kernel.shape}, expected (kernel_size, in_channels, filters)")
    conv = Conv1D(kernel.transpose(2, 1, 0), got[1] if use_bias else None,
                  _one(ctx, e, cfg.get("strides", 1), "strides"), str(cfg.get("padding", "valid")),
                  _one(ctx, e, cfg.get("dilation_rate", 1), "dilation_rate"), "linear", name=e["name"])
    return _with_activation(ctx, e, conv, cfg.get("activation", "linear"))


def _flatten(ctx, e, cfg, weights, kw):
    _channels_last(ctx, e, cfg)
    return Flatten(name=e["name"])


def _reshape(ctx, e, cfg, weights, kw):
    return Reshape(tuple(int(s) for s in cfg.get("target_shape", [])), name=e["name"])


def _permute(ctx, e, cfg, weights, kw):
    return Permute(tuple(int(d) for d in cfg.get("dims", [])), name=e["name"])


def _repeat_vector(ctx, e, cfg, weights, kw):
    return RepeatVector(int(cfg["n"]), name=e["name"])


def _norm_axis(ctx, e, cfg):
    axis = cfg.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise ctx.unsupported(e, f"normalization over several axes {axis} is not supported (last axis only)")
        axis = axis[0]
    return int(axis)


def _layer_norm(ctx, e, cfg, weights, kw):
    if cfg.get("rms_scaling"):
        raise ctx.unsupported(e, "rms_scaling=True is not supported")
    if _norm_axis(ctx, e, cfg) != -1:
        raise ctx.unsupported(e, "normalization over an axis other than the last (-1) is not supported")
    names = (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else [])
    got = dict(zip(names, _take(ctx, e, weights.arrays(e), names)))
    size = (got.get("gamma") if "gamma" in got else got.get("beta"))
    if size is None:
        raise ctx.unsupported(e, "LayerNormalization without scale and center: fastrnn needs the feature size")
    return LayerNormalization(size.shape[0], got.get("gamma"), got.get("beta"), float(cfg.get("epsilon", 1e-3)),
                              name=e["name"])


def _batch_norm(ctx, e, cfg, weights, kw):
    if cfg.get("mode", 0) != 0:  # Keras 1: modes 1 and 2 normalize with the batch's own statistics
        raise ctx.unsupported(e, f"Keras 1 BatchNormalization mode={cfg.get('mode')} is not supported (mode 0 is)")
    if _norm_axis(ctx, e, cfg) != -1:
        raise ctx.unsupported(e, "normalization over an axis other than the last (-1) is not supported")
    names = (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else []) + [
        "moving_mean", "moving_variance"]
    got = dict(zip(names, _take(ctx, e, weights.arrays(e), names)))
    return BatchNormalization(got["moving_mean"], got["moving_variance"], got.get("gamma"), got.get("beta"),
                              float(cfg.get("epsilon", 1e-3)), name=e["name"])


def _attention(ctx, e, cfg, weights, kw):
    additive = e.get("inner_class", e["class_name"]) == "AdditiveAttention"
    mode = "additive" if additive else str(cfg.get("score_mode", "dot"))
    if mode not in ("dot", "concat", "additive"):
        raise ctx.unsupported(e, f"score_mode {mode!r}")
    names = (["scale"] if cfg.get("use_scale", additive) else []) + (["concat_score_weight"] if mode == "concat"
                                                                     else [])
    got = dict(zip(names, _take(ctx, e, weights.arrays(e), names)))
    causal = bool(kw.get("use_causal_mask", False)) or bool(cfg.get("causal", False))
    return Attention(mode, got.get("scale"), got.get("concat_score_weight"), causal, name=e["name"])


_CONVERTERS = {
    "Embedding": _embedding, "Masking": _masking, "Dense": _dense, "Activation": _activation_layer,
    "Softmax": _softmax_layer, "ReLU": _relu_layer, "LeakyReLU": _leaky_relu_layer, "ELU": _elu_layer,
    "Concatenate": _concatenate, "Dot": _dot, "GlobalAveragePooling1D": _global_pooling,
    "GlobalMaxPooling1D": _global_pooling, "GlobalAvgPool1D": _global_pooling, "GlobalMaxPool1D": _global_pooling,
    "MaxPooling1D": _pooling, "AveragePooling1D": _pooling, "MaxPool1D": _pooling, "AvgPool1D": _pooling,
    "Conv1D": _conv1d, "Convolution1D": _conv1d, "Flatten": _flatten, "Reshape": _reshape, "Permute": _permute,
    "RepeatVector": _repeat_vector, "LayerNormalization": _layer_norm, "BatchNormalization": _batch_norm,
    "Attention": _attention, "AdditiveAttention": _attention, "Merge": _keras1_merge,
}
_CONVERTERS.update({cls: _merge for cls in MERGE_OPS})
_CONVERTERS.update({cls: _no_op for cls in NO_OP_LAYERS})
_MULTI_INPUT = set(MERGE_OPS) | {"Concatenate", "Dot", "Attention", "AdditiveAttention", "Merge"}
# layers that act on each step alone (on the last axis): TimeDistributed of them is the layer itself
_PER_STEP = {"Dense", "Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "LayerNormalization",
             "BatchNormalization"} | set(NO_OP_LAYERS)


def _rnn_options(ctx, e, cfg):
    """Cell kind, units and the options of one Keras SimpleRNN / LSTM / GRU config."""
    cls = e["class_name"] if e["class_name"] in RECURRENT_CELLS else None
    if cls is None:
        raise ctx.unsupported(e)
    if cfg.get("time_major"):
        raise ctx.unsupported(e, "time_major=True is not supported")
    cell = RECURRENT_CELLS[cls]
    cudnn = cls in CUDNN_LAYERS
    act = "tanh" if cudnn else cfg.get("activation", "tanh")
    if cell == "rnn":
        acts = (_activation(ctx, e, act, "activation"),)
    else:
        # Keras 1 and Keras 2 before 2.3 defaulted to hard_sigmoid (their configs record it anyway)
        default = "hard_sigmoid" if ctx.version < (2, 3) else "sigmoid"
        rec = _activation(ctx, e, "sigmoid" if cudnn else cfg.get("recurrent_activation", default),
                          "recurrent_activation")
        g = _activation(ctx, e, act, "activation")
        acts = (rec, g, g) if cell == "lstm" else (rec, g)
    if "units" not in cfg:
        raise ctx.error(e, "the config has no 'units' (nor Keras 1's 'output_dim')")
    return {
        "cell": cell, "units": int(cfg["units"]), "activations": acts, "cudnn": cudnn,
        "use_bias": True if cudnn else bool(cfg.get("use_bias", True)),
        # reset_after appeared in Keras 2.1.3 (default False); Keras 3 defaults to True; CuDNNGRU is
        # the reset-after variant
        "reset_after": (cudnn or bool(cfg.get("reset_after", not ctx.legacy))) if cell == "gru" else True,
        "go_backwards": bool(cfg.get("go_backwards", False)),
        "return_sequences": bool(cfg.get("return_sequences", False)),
        "return_state": bool(cfg.get("return_state", False)),
        "zero_output_for_mask": bool(cfg.get("zero_output_for_mask", False)),
    }


def _per_gate(a, gates, fn):
    """Apply ``fn`` to each gate block (last axis split in ``gates``) and put them back together."""
    return np.concatenate([fn(block) for block in np.split(a, gates, axis=-1)], axis=-1)


def _keras2_rnn_arrays(ctx, e, opts, arrays):
    """One direction's weight arrays in the Keras 2 LSTM / GRU / SimpleRNN layout [kernel,
    recurrent_kernel(, bias)], converted as Keras 2's loader did (its
    ``preprocess_weights_for_loading``):

    - Keras 1 stored one kernel, recurrent kernel and bias per gate: LSTM 12 arrays in gate order
      i, c, f, o (-> i|f|c|o), GRU 9 arrays z, r, h (-> z|r|h).
    - CuDNNLSTM / CuDNNGRU (recognised by their bias: input and recurrent halves, 2x the size, as
      Keras 2 did, whether the architecture says CuDNNLSTM or LSTM): cuDNN reads each gate's
      kernel block (I, U) as the flat bytes of a row-major (U, I) matrix W applied as W @ x, so the
      row-vector kernel is that W transposed; each recurrent block (U, U) is applied as R @ h, so
      it is transposed; CuDNNLSTM's two biases are summed, CuDNNGRU's become GRU(reset_after)'s
      (2, 3U) [input; recurrent] bias. CuDNNGRU weights do not fit a reset-before GRU."""
    cell, U = opts["cell"], opts["units"]
    G = GATES[cell]
    names, a = [n for n, _ in arrays], [x for _, x in arrays]
    if cell == "lstm" and len(a) == 12:
        order = (0, 2, 1, 3)  # file i, c, f, o -> i, f, c, o
        return [(f"{names[0]}..{names[-1]} (Keras 1, {part})",
                 np.concatenate([a[3 * gate + j] for gate in order], axis=-1))
                for j, part in enumerate(("kernel", "recurrent_kernel", "bias"))]
    if cell == "gru" and len(a) == 9:  # z, r, h: Keras 2's order already
        return [(f"{names[0]}..{names[-1]} (Keras 1, {part})",
                 np.concatenate([a[3 * gate + j] for gate in range(3)], axis=-1))
                for j, part in enumerate(("kernel", "recurrent_kernel", "bias"))]
    if cell in ("lstm", "gru") and len(a) == 3 and a[1].ndim == 2 and a[2].shape == (2 * G * a[1].shape[0],):
        kernel, rec, bias = a
        if cell == "gru" and not opts["reset_after"]:
            raise ctx.error(e, "the file holds CuDNNGRU weights (bias of 6 x units), which do not fit a GRU with "
                               "reset_after=False (Keras 2 refused it too): the architecture must say "
                               "CuDNNGRU or GRU(reset_after=True)")
        n_in, units = kernel.shape[0], rec.shape[0]
        kernel = _per_gate(kernel, G, lambda k: k.reshape(units, n_in).T)
        rec = _per_gate(rec, G, lambda r: r.T)
        bias = bias[:G * units] + bias[G * units:] if cell == "lstm" else bias.reshape(2, G * units)
        return [(names[0] + " (cuDNN)", kernel), (names[1] + " (cuDNN)", rec), (names[2] + " (cuDNN)", bias)]
    return arrays


def _zrh_to_rzn(a, units):
    """Keras GRU gate blocks z|r|h on the last axis -> fastrnn r|z|n."""
    U = units
    return np.concatenate([a[..., U:2 * U], a[..., :U], a[..., 2 * U:3 * U]], axis=-1)


def _direction(ctx, e, opts, arrays) -> DirectionWeights:
    """One direction from Keras kernel (I, G*U), recurrent_kernel (U, G*U) [, bias]."""
    cell, U = opts["cell"], opts["units"]
    G = GATES[cell]
    arrays = _keras2_rnn_arrays(ctx, e, opts, arrays)
    got = _take(ctx, e, arrays, ["kernel", "recurrent_kernel", "bias"] if opts["use_bias"]
                else ["kernel", "recurrent_kernel"])
    kernel, rec = got[0], got[1]
    bias = got[2] if opts["use_bias"] else None
    if kernel.ndim != 2 or kernel.shape[1] != G * U or rec.shape != (U, G * U):
        raise ctx.error(e, f"kernel {kernel.shape} / recurrent_kernel {rec.shape} do not match units={U} "
                           f"({G} gate blocks)")
    two_biases = cell == "gru" and opts["reset_after"]
    if bias is not None and bias.shape != ((2, G * U) if two_biases else (G * U,)):
        raise ctx.error(e, f"bias has shape {bias.shape}, expected {(2, G * U) if two_biases else (G * U,)}")
    if cell == "gru":  # z|r|h -> r|z|n
        kernel, rec = _zrh_to_rzn(kernel, U), _zrh_to_rzn(rec, U)
        bias = None if bias is None else _zrh_to_rzn(bias, U)
    b_ih, b_hh = (bias[0], bias[1]) if (two_biases and bias is not None) else (bias, None)
    return DirectionWeights(w_ih=kernel.T, w_hh=rec.T, b_ih=b_ih, b_hh=b_hh)


def _recurrent(ctx, e, weights) -> Recurrent:
    opts = _rnn_options(ctx, e, e["config"])
    d = _direction(ctx, e, opts, weights.arrays(e))
    try:
        return Recurrent(
            cell=opts["cell"], hidden_size=opts["units"], directions=[d], activations=opts["activations"],
            go_backwards=opts["go_backwards"], return_sequences=opts["return_sequences"],
            masked_output="zero" if opts["zero_output_for_mask"] else "hold",
            linear_before_reset=opts["reset_after"], name=e["name"], return_state=opts["return_state"])
    except ValueError as exc:
        raise ctx.error(e, str(exc)) from None


def _bidirectional(ctx, e, weights) -> Recurrent:
    cfg = e["config"]
    merge_mode = cfg.get("merge_mode", "concat")
    if merge_mode is None:
        raise ctx.unsupported(e, "merge_mode=None returns two separate outputs; fastrnn supports merge_mode "
                                 "concat, sum, mul and ave")
    if merge_mode not in ("concat", "sum", "mul", "ave"):
        raise ctx.unsupported(e, f"merge_mode {merge_mode!r}")
    fwd = _entry(cfg.get("layer") or {}, ctx.source)
    if cfg.get("backward_layer"):
        bwd = _entry(cfg["backward_layer"], ctx.source)
    else:  # Keras recreates the backward layer from the forward config with go_backwards flipped
        bwd = dict(fwd, config=dict(fwd["config"], go_backwards=not fwd["config"].get("go_backwards", False)))
    for inner in (fwd, bwd):
        if inner["class_name"] not in RECURRENT_CELLS:
            raise ctx.unsupported(e, f"Bidirectional({inner['class_name']}) is not supported; fastrnn reads "
                                     "Bidirectional(SimpleRNN | LSTM | GRU)")
    fo, bo = _rnn_options(ctx, fwd, fwd["config"]), _rnn_options(ctx, bwd, bwd["config"])
    if fo["go_backwards"] or not bo["go_backwards"]:
        raise ctx.unsupported(e, "the forward layer must have go_backwards=False and the backward layer "
                                 "go_backwards=True (fastrnn's bidirectional layout)")
    same = ("cell", "units", "activations", "reset_after", "return_sequences", "cudnn")
    if fwd["class_name"] != bwd["class_name"] or any(fo[k] != bo[k] for k in same):
        raise ctx.unsupported(e, "a backward layer that differs from the forward layer (class, units, "
                                 "activations, reset_after) is not supported")
    arrays = weights.arrays(e)
    n_fwd = len(arrays) // 2  # forward then backward weights (3 each, 12 / 9 for Keras 1 files)
    dirs = [_direction(ctx, e, fo, arrays[:n_fwd]), _direction(ctx, e, bo, arrays[n_fwd:])]
    try:
        return Recurrent(
            cell=fo["cell"], hidden_size=fo["units"], directions=dirs, activations=fo["activations"],
            return_sequences=fo["return_sequences"], merge_mode=merge_mode,
            masked_output="zero",  # Keras forces zero_output_for_mask inside Bidirectional
            linear_before_reset=fo["reset_after"], name=e["name"],
            return_state=bool(cfg.get("return_state", fo["return_state"])))
    except ValueError as exc:
        raise ctx.error(e, str(exc)) from None
