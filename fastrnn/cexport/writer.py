"""Write a model as C99: ``NAME.h`` (sizes, the state struct, the API) and ``NAME.c`` (weights as
``static const`` arrays, one function per layer, the step / predict / generate loops).

The generated code reads like the model: for every node of the chain (fastrnn.cexport.chain) its
weights, each with its shape and gate order in a comment, then a function computing it, with the
formula above each block. Sizes are constants the compiler sees. Matrices are stored transposed,
(in, out), so that a matrix-vector product is a run of ``y += column * x[k]`` over contiguous
memory (four columns at a time), in blocks of a constant size that compilers vectorize at -O2.

Float32 weights are the model's bits; int8 weights are fastrnn's int8 rule (fastrnn.quantize:
one scale per output row, ``q = rint(W / scale)``), computed by fastrnn.quantize itself, and the
int8 products follow fastrnn's int8 reference step by step (activations quantized per row, exact
integer sums, the same float operations in the same order).
"""
from __future__ import annotations

import re

import numpy as np

from ..graph import type_name
from . import runtime
from .chain import Chain
from .ctext import array_body, c_comment, c_float, c_string

f32 = np.float32
GATE_NAMES = {"lstm": "i|f|g|o", "gru": "r|z|n", "rnn": "one block"}


class Code:
    """Lines of C with indentation."""

    def __init__(self):
        self.lines = []
        self.depth = 0

    def __call__(self, *lines):
        for line in lines:
            self.lines.append(("    " * self.depth + line) if line else "")
        return self

    def open(self, line):
        self(line + " {" if not line.endswith("{") else line)
        self.depth += 1

    def close(self, tail=""):
        self.depth -= 1
        self("}" + tail)

    def text(self):
        return "\n".join(self.lines) + "\n"


class Matrix:
    """One weight matrix W (N, K) as C arrays and the call that multiplies it: ``y = W x``."""

    def __init__(self, writer, tag, w, what):
        w = np.ascontiguousarray(w, dtype=f32)
        self.N, self.K = w.shape
        self.writer = writer
        p = writer.p
        writer.sizes["mv_n"] = max(writer.sizes["mv_n"], self.N)
        writer.sizes["mv_k"] = max(writer.sizes["mv_k"], self.K)
        if writer.int8:
            from ..quantize import quantize_int8

            q, scale = quantize_int8(w)
            self.q, self.scale = q, scale
            self.q_name, self.s_name = f"{p}{tag}_q", f"{p}{tag}_scale"
            writer.array(self.q_name, "int8_t", q.T, f"{what} (out {self.N}, in {self.K}) as int8, stored "
                                                      f"transposed (in, out); row n of W = scale[n] * q[:, n]")
            writer.array(self.s_name, "float", scale, f"{what}: one scale per output row")
            writer.use("mv_i8")
        else:
            self.name = f"{p}{tag}"
            writer.array(self.name, "float", w.T, f"{what} (out {self.N}, in {self.K}), stored transposed (in, out)")
            writer.use("mv")

    def call(self, x, y):
        p = self.writer.p
        if self.writer.int8:
            return f"{p}mv_i8({self.q_name}, {self.s_name}, {x}, {self.K}, {self.N}, {y}, s->xq, s->acc);"
        return f"{p}mv({self.name}, {x}, {self.K}, {self.N}, {y});"


class Writer:
    """Builds NAME.h and NAME.c for a chain (see the module doc)."""

    def __init__(self, model, chain: Chain, name, weights, max_steps, generation=None, classifier=None,
                 table=None, source=None):
        self.model, self.chain, self.name = model, chain, name
        self.p, self.P = name + "_", name.upper() + "_"
        self.int8 = weights == "int8"
        self.weights = weights
        self.max_steps = max_steps
        self.generation = generation  # None or dict(kind="chain"|"step", vocab_size, table_rows, head)
        self.classifier = classifier  # None or dict(labels, activation, outputs, unknown_threshold)
        self.table = table  # fastrnn.cexport.text.CodeTable or None
        self.vocab = model.vocabulary
        self.source = source or model.name
        self.used = set()
        self.arrays = []  # C text of the weight and table arrays, in order
        self.funcs = []  # C text of the functions, in order
        self.sizes = {"mv_n": 0, "mv_k": 0, "gates": 0}  # work buffers the struct needs

    # -- arrays ---------------------------------------------------------------------------------
    def array(self, name, ctype, values, comment):
        values = np.asarray(values)
        n = int(values.size)
        body = array_body(values, "float" if ctype == "float" else "int")
        self.arrays.append(f"/* {c_comment(comment)} */\nstatic const {ctype} {name}[{max(n, 1)}] = {body};\n")
        return name

    def vector(self, tag, v, comment):
        if v is None:
            return None
        return self.array(self.p + tag, "float", np.asarray(v, f32), comment)

    def use(self, *names):
        self.used.update(names)

    # -- activations ------------------------------------------------------------------------------
    def act(self, act, x):
        """The C expression of fastrnn.activations ``act`` (an Activation) applied to ``x``."""
        p = self.p
        name, a, b = act.name, c_float(act.alpha), c_float(act.beta)
        if name == "sigmoid":
            self.use("sigmoid")
            return f"{p}sigmoid({x})"
        if name == "tanh":
            return f"tanhf({x})"
        if name == "relu":
            self.use("relu")
            return f"{p}relu({x})"
        if name == "affine":
            return f"({a} * {x} + {b})"
        if name == "hard_sigmoid":
            self.use("clip01")
            return f"{p}clip01({a} * {x} + {b})"
        if name in ("leaky_relu", "thresholded_relu", "elu"):
            self.use(name)
            return f"{p}{name}({x}, {a})"
        if name == "scaled_tanh":
            return f"({a} * tanhf({b} * {x}))"
        if name == "softsign":
            return f"({x} / (1.0f + fabsf({x})))"
        if name in ("softplus", "selu", "gelu", "gelu_tanh"):
            self.use(name)
            return f"{p}{name}({x})"
        if name == "exponential":
            return f"expf({x})"
        if name == "swish":
            return f"({x} / (1.0f + expf(-{x})))"
        raise ValueError(f"export-c: activation {name!r} has no C form")  # pragma: no cover

    def vector_activation(self, c, function, n, src, dst, act=None):
        """Code applying a Dense/Activation function over n features: dst = f(src)."""
        if function == "linear" or function == "identity":
            if src != dst:
                c(f"for (j = 0; j < {n}; j++)", f"    {dst}[j] = {src}[j];")
            return
        if function in ("softmax", "log_softmax"):
            self.use(function)
            c(f"{self.p}{function}({src}, {n}, {dst});")
            return
        c(f"for (j = 0; j < {n}; j++)", f"    {dst}[j] = {self.act(act, f'{src}[j]')};")

    # -- one function per node ----------------------------------------------------------------------
    def node_tag(self, stage):
        return f"n{stage.index}"

    def emit_function(self, head, body_code, uses_s=True):
        """A function: ``head`` its comment and signature, ``body_code`` a Code; ``int j`` is declared
        when the body uses it, and ``s`` voided when the signature has it but the body does not."""
        text = body_code.text()
        lines = [head, "{"]
        if re.search(r"\bj\b", text):
            lines.append("    int j;")
        if uses_s and "s->" not in text and "(s," not in text:
            lines.append("    (void)s;")
        body = text.rstrip("\n")
        self.funcs.append("\n".join(lines) + ("\n" + body if body else "") + "\n}\n")

    def stage_comment(self, stage):
        return f"node {c_comment(stage.name)!r} ({c_comment(type_name(stage.layer))})"

    def emit_recurrent(self, stage):
        layer = stage.layer
        tag = self.node_tag(stage)
        p = self.p
        H, Ho, G, I = layer.hidden_size, layer.output_size_per_direction, layer.gates, layer.input_size
        self.sizes["gates"] = max(self.sizes["gates"], G * H)
        f_act = layer.activations[0]
        clip = None if layer.clip is None else c_float(layer.clip)
        if clip is not None:
            self.use("clip")

        def clipped(expr):
            return f"{p}clip({expr}, {clip})" if clip is not None else expr

        for d, w in enumerate(layer.directions):
            dt = f"{tag}_d{d}"
            what = f"{self.stage_comment(stage)} direction {d}"
            gates = GATE_NAMES[layer.cell]
            w_ih = Matrix(self, f"{dt}_w_ih", w.w_ih, f"{what}: W_ih, gates {gates}")
            if layer.cell == "gru" and not layer.linear_before_reset:
                w_hh = Matrix(self, f"{dt}_w_hh_rz", w.w_hh[:2 * H], f"{what}: W_hh rows of the gates r|z")
                w_hn = Matrix(self, f"{dt}_w_hn", w.w_hh[2 * H:], f"{what}: W_hh rows of the candidate n, applied "
                                                                   "to r * h (reset before the product)")
            else:
                w_hh = Matrix(self, f"{dt}_w_hh", w.w_hh, f"{what}: W_hh, gates {gates}")
            b_ih = self.vector(f"{dt}_b_ih", w.b_ih, f"{what}: b_ih ({G * H}), gates {gates}")
            b_hh = self.vector(f"{dt}_b_hh", w.b_hh, f"{what}: b_hh ({G * H}), gates {gates}")
            w_hr = None if w.w_hr is None else Matrix(self, f"{dt}_w_hr", w.w_hr, f"{what}: projection W_hr")
            peep = self.vector(f"{dt}_peephole", None if w.peephole is None else w.peephole.reshape(-1),
                               f"{what}: peepholes (3, {H}), rows i|f|o")
            c = Code()
            c.depth = 1
            n_rows_h = 2 * H if (layer.cell == "gru" and not layer.linear_before_reset) else G * H
            c(f"float *gx = s->gates_x, *gh = s->gates_h;")
            c(f"/* gx = W_ih x + b_ih, gh = W_hh h + b_hh (gates {gates}) */")
            c(w_ih.call("x", "gx"))
            if b_ih:
                c(f"for (j = 0; j < {G * H}; j++)", f"    gx[j] += {b_ih}[j];")
            c(w_hh.call("h", "gh"))
            if b_hh:
                c(f"for (j = 0; j < {n_rows_h}; j++)", f"    gh[j] += {b_hh}[j];")
            if layer.cell == "rnn":
                c("/* h' = f(gx + gh) */")
                c(f"for (j = 0; j < {H}; j++)", f"    h[j] = {self.act(f_act, clipped('gx[j] + gh[j]'))};")
            elif layer.cell == "lstm":
                g_act, h_act = layer.activations[1], layer.activations[2]
                m = "s->tmp" if w_hr is not None else "h"
                if w_hr is not None:
                    self.sizes["tmp"] = max(self.sizes.get("tmp", 0), H)
                c("/* i = f(a_i + p_i c), f = f(a_f + p_f c), g = g(a_g), c' = f c + i g, o = f(a_o + p_o c'),")
                c("   m = o h(c'); h' = m, or W_hr m with a projection */")
                c.open(f"for (j = 0; j < {H}; j++)")
                pi = f" + {peep}[j] * c[j]" if peep else ""
                pf = f" + {peep}[{H} + j] * c[j]" if peep else ""
                po = f" + {peep}[{2 * H} + j] * cn" if peep else ""
                c(f"const float i = {self.act(f_act, clipped(f'(gx[j] + gh[j]){pi}'))};")
                if layer.input_forget:
                    c("const float f = 1.0f - i;")
                else:
                    c(f"const float f = {self.act(f_act, clipped(f'(gx[{H} + j] + gh[{H} + j]){pf}'))};")
                c(f"const float g = {self.act(g_act, clipped(f'gx[{2 * H} + j] + gh[{2 * H} + j]'))};")
                c("const float cn = f * c[j] + i * g;")
                c(f"const float o = {self.act(f_act, clipped(f'(gx[{3 * H} + j] + gh[{3 * H} + j]){po}'))};")
                c("c[j] = cn;")
                c(f"{m}[j] = o * {self.act(h_act, 'cn')};")
                c.close()
                if w_hr is not None:
                    c(w_hr.call("s->tmp", "h"))
            else:  # GRU
                g_act = layer.activations[1]
                if layer.linear_before_reset:
                    c("/* r = f(x_r + h_r), z = f(x_z + h_z), n = g(x_n + r * h_n), h' = (1 - z) n + z h */")
                    c.open(f"for (j = 0; j < {H}; j++)")
                    c(f"const float r = {self.act(f_act, clipped('gx[j] + gh[j]'))};")
                    c(f"const float z = {self.act(f_act, clipped(f'gx[{H} + j] + gh[{H} + j]'))};")
                    c(f"const float n = {self.act(g_act, clipped(f'gx[{2 * H} + j] + r * gh[{2 * H} + j]'))};")
                    c("h[j] = (1.0f - z) * n + z * h[j];")
                    c.close()
                else:
                    self.sizes["tmp"] = max(self.sizes.get("tmp", 0), H)
                    self.sizes["tmp2"] = max(self.sizes.get("tmp2", 0), H)
                    b_hn = "" if b_hh is None else f" + {b_hh}[{2 * H} + j]"
                    c("/* r = f(x_r + h_r), z = f(x_z + h_z), n = g(x_n + W_hn (r * h) + b_hn),",
                      "   h' = (1 - z) n + z h */")
                    c.open(f"for (j = 0; j < {H}; j++)")
                    c(f"const float r = {self.act(f_act, clipped('gx[j] + gh[j]'))};")
                    c(f"s->tmp2[j] = {self.act(f_act, clipped(f'gx[{H} + j] + gh[{H} + j]'))};")
                    c("s->tmp[j] = r * h[j];")
                    c.close()
                    c(w_hn.call("s->tmp", "gh"))
                    c.open(f"for (j = 0; j < {H}; j++)")
                    c(f"const float n = {self.act(g_act, clipped(f'(gx[{2 * H} + j] + gh[j]){b_hn}'))};")
                    c("h[j] = (1.0f - s->tmp2[j]) * n + s->tmp2[j] * h[j];")
                    c.close()
            params = "float *h, float *c" if layer.cell == "lstm" else "float *h"
            head = (f"/* {what}: one step of the {layer.cell.upper()} cell, x ({I}) -> h ({Ho})"
                    + (f", c ({H})" if layer.cell == "lstm" else "") + " in place */\n"
                    f"static void {p}{dt}(NAME_STATE *s, const float *restrict x, {params})")
            self.emit_function(head, c)

    def emit_dense(self, stage):
        layer = stage.layer
        tag = self.node_tag(stage)
        what = self.stage_comment(stage)
        w = Matrix(self, f"{tag}_w", layer.weight, f"{what}: W")
        b = self.vector(f"{tag}_b", layer.bias, f"{what}: bias ({layer.output_size})")
        c = Code()
        c.depth = 1
        c(w.call("x", "y"))
        if b:
            c(f"for (j = 0; j < {layer.output_size}; j++)", f"    y[j] += {b}[j];")
        self.emit_function(f"/* {what}: y ({layer.output_size}) = W x + b */\n"
                           f"static void {self.p}{tag}_affine(NAME_STATE *s, const float *restrict x, "
                           "float *restrict y)", c)
        if layer.activation != "linear":
            from ..activations import Activation as Fn

            c = Code()
            c.depth = 1
            fn = layer.activation
            act = None if fn in ("softmax", "log_softmax") else Fn.of(fn)
            self.vector_activation(c, fn, layer.output_size, "y", "y", act)
            self.emit_function(f"/* {what}: its activation {fn}, in place */\n"
                               f"static void {self.p}{tag}_activate(float *y)", c, uses_s=False)

    def emit_activation(self, stage):
        from ..activations import Activation as Fn

        layer = stage.layer
        tag = self.node_tag(stage)
        c = Code()
        c.depth = 1
        f = layer.function
        n = stage.out_size
        if f in ("gelu", "gelu_tanh"):
            self.use(f)
            c(f"for (j = 0; j < {n}; j++)", f"    y[j] = {self.p}{f}(x[j]);")
        elif f in ("softmax", "log_softmax"):
            self.vector_activation(c, f, n, "x", "y")
        else:
            self.vector_activation(c, f, n, "x", "y", Fn(f, layer.alpha, layer.beta))
        self.emit_function(f"/* {self.stage_comment(stage)}: y = {f}(x), {n} features */\n"
                           f"static void {self.p}{tag}(const float *restrict x, float *restrict y)", c, uses_s=False)

    def emit_layer_norm(self, stage):
        layer = stage.layer
        tag = self.node_tag(stage)
        what = self.stage_comment(stage)
        gamma = self.vector(f"{tag}_gamma", layer.gamma, f"{what}: gamma")
        beta = self.vector(f"{tag}_beta", layer.beta, f"{what}: beta")
        self.use("layer_norm")
        c = Code()
        c.depth = 1
        c(f"{self.p}layer_norm(x, {layer.size}, {c_float(layer.epsilon)}, {gamma or '0'}, {beta or '0'}, y);")
        self.emit_function(f"/* {what}: y = (x - mean) / sqrt(var + eps) * gamma + beta */\n"
                           f"static void {self.p}{tag}(const float *restrict x, float *restrict y)", c, uses_s=False)

    def emit_batch_norm(self, stage):
        layer = stage.layer
        tag = self.node_tag(stage)
        what = self.stage_comment(stage)
        mean = self.vector(f"{tag}_mean", layer.moving_mean, f"{what}: moving mean")
        den = self.vector(f"{tag}_den", np.sqrt(layer.moving_variance + f32(layer.epsilon)).astype(f32),
                          f"{what}: sqrt(moving variance + epsilon)")
        gamma = self.vector(f"{tag}_gamma", layer.gamma, f"{what}: gamma")
        beta = self.vector(f"{tag}_beta", layer.beta, f"{what}: beta")
        c = Code()
        c.depth = 1
        expr = f"(x[j] - {mean}[j]) / {den}[j]"
        if gamma:
            expr = f"{expr} * {gamma}[j]"
        if beta:
            expr = f"{expr} + {beta}[j]"
        c(f"for (j = 0; j < {layer.size}; j++)", f"    y[j] = {expr};")
        self.emit_function(f"/* {what}: y = (x - mean) / sqrt(var + eps) * gamma + beta */\n"
                           f"static void {self.p}{tag}(const float *restrict x, float *restrict y)", c, uses_s=False)

    def emit_embedding(self, stage):
        layer = stage.layer
        tag = self.node_tag(stage)
        what = self.stage_comment(stage)
        E = layer.output_size
        c = Code()
        c.depth = 1
        if self.int8:
            from ..quantize import quantize_int8

            q, scale = quantize_int8(layer.weight)
            self.array(f"{self.p}{tag}_q", "int8_t", q, f"{what}: table ({layer.vocab_size}, {E}) as int8; row v = "
                                                       "scale[v] * q[v]")
            self.array(f"{self.p}{tag}_scale", "float", scale, f"{what}: one scale per row")
            c(f"const int8_t *row = {self.p}{tag}_q + (long)token * {E};")
            c(f"const float scale = {self.p}{tag}_scale[token];")
            c(f"for (j = 0; j < {E}; j++)", "    y[j] = scale * (float)row[j];")
        else:
            self.array(f"{self.p}{tag}_w", "float", layer.weight, f"{what}: table ({layer.vocab_size}, {E})")
            c(f"const float *row = {self.p}{tag}_w + (long)token * {E};")
            c(f"for (j = 0; j < {E}; j++)", "    y[j] = row[j];")
        self.emit_function(f"/* {what}: y ({E}) = row token of the table */\n"
                           f"static void {self.p}{tag}(int32_t token, float *restrict y)", c, uses_s=False)

    def emit_nodes(self):
        for stage in self.chain.stages:
            kind = stage.kind
            if kind == "embedding":
                self.emit_embedding(stage)
            elif kind == "recurrent":
                self.emit_recurrent(stage)
            elif kind == "dense":
                self.emit_dense(stage)
            elif kind == "activation":
                self.emit_activation(stage)
            elif kind == "layer_norm":
                self.emit_layer_norm(stage)
            elif kind == "batch_norm":
                self.emit_batch_norm(stage)

    # -- running a vector stage (shared by the step and the suffix after a reduction) -------------------
    def vector_stage(self, c, stage, src, dst, logits=None):
        """Code running per-step stage ``stage`` on vector ``src`` into ``dst``; for the head of a
        generating chain also copies the Dense's affine output into ``logits`` (if not null)."""
        p, tag = self.p, self.node_tag(stage)
        kind = stage.kind
        if kind == "dense":
            c(f"{p}{tag}_affine(s, {src}, {dst});")
            if logits is not None:
                c(f"if ({logits})", f"    for (j = 0; j < {stage.out_size}; j++) {logits}[j] = {dst}[j];")
            if stage.layer.activation != "linear":
                c(f"{p}{tag}_activate({dst});")
        elif kind in ("activation", "layer_norm", "batch_norm"):
            c(f"{p}{tag}({src}, {dst});")
        else:  # pragma: no cover
            raise AssertionError(kind)

    # -- the step loop ------------------------------------------------------------------------------------
    def input_decl(self):
        if self.chain.takes_tokens:
            return "int32_t token"
        return "const float *x"

    def step_mask_code(self, c):
        """valid: the step is not padding (only models with a mask have padded steps)."""
        ch = self.chain
        if ch.mask == "zero_id":
            c("valid = !use_mask || token != 0;")
        elif ch.mask == "value":
            c("valid = !use_mask;")
            c(f"for (j = 0; !valid && j < {ch.input_size}; j++)", f"    valid = x[j] != {c_float(ch.mask_value)};")
        else:
            c("(void)use_mask;")

    def emit_step(self):
        """run_step: one time step of a causal chain; the public step / predict / generate call it."""
        ch, p = self.chain, self.p
        stages = ch.stages
        stateful = [i for i, s in enumerate(stages) if s.kind in ("recurrent", "select")]
        last_stateful = stateful[-1] if stateful else -1
        reducer = ch.reducer
        red_index = stages.index(reducer) if reducer is not None else None
        c = Code()
        c.depth = 1
        masked = ch.mask is not None
        c("const float *cur;" if ch.takes_tokens else "const float *cur = x;")
        if masked:
            c("int valid;")
        if ch.takes_tokens:
            rows = ch.input_size
            c(f"if (token < 0 || token >= {rows})", f"    return {self.P}ERR_TOKEN;")
        self.step_mask_code(c)
        buffers = ["s->work[0]", "s->work[1]"]
        where = None  # index of the work buffer cur points into (None: the input or the state)
        head = stages[-1]
        head_logits = (self.generation is not None and self.generation["kind"] == "chain")
        for i, stage in enumerate(stages):
            if reducer is not None and i > red_index:
                break
            if i == last_stateful + 1 and (red_index is None):
                self.count_step(c)
                c("if (!output && !logits)", f"    return {self.P}OK;")
            kind = stage.kind
            tag = self.node_tag(stage)
            if kind == "embedding":
                dst = 0 if where != 0 else 1
                c(f"{p}{tag}(token, {buffers[dst]});")
                c(f"cur = {buffers[dst]};")
                where = dst
            elif kind == "masking":
                continue  # the mask is read from the input above
            elif kind == "recurrent":
                layer = stage.layer
                h = f"s->state + {stage.state_offset}"
                cc = ""
                if layer.cell == "lstm":
                    cc = f", s->state + {stage.state_offset + layer.output_size_per_direction}"
                if masked:
                    c("if (valid)", f"    {p}{tag}_d0(s, cur, {h}{cc});")
                else:
                    c(f"{p}{tag}_d0(s, cur, {h}{cc});")
                if stage.reduces:
                    continue
                if ch.mask is not None:
                    dst = 0 if where != 0 else 1
                    hold = layer.masked_output == "hold"
                    cond = "valid || s->stepped_valid" if hold else "valid"
                    c.open(f"if ({cond})")
                    c(f"cur = {h};")
                    c.close(" else {")
                    c.depth += 1
                    c(f"for (j = 0; j < {layer.output_size}; j++)", f"    {buffers[dst]}[j] = 0.0f;")
                    c(f"cur = {buffers[dst]};")
                    c.close()
                    where = dst  # cur is the state or this zeroed buffer: the next stage writes the other
                else:
                    c(f"cur = {h};")
                    where = None
            elif kind == "select":
                c(f"for (j = 0; j < {stage.out_size}; j++)", "    s->last[j] = cur[j];")
            else:
                dst = 0 if where != 0 else 1
                is_head = stage is head and head_logits
                self.vector_stage(c, stage, "cur", buffers[dst], "logits" if is_head else None)
                c(f"cur = {buffers[dst]};")
                where = dst
        if red_index is not None:
            self.count_step(c)
            c("(void)logits;")
            c("if (output)", f"    {p}finish(s, output);")
            c(f"return {self.P}OK;")
        else:
            if last_stateful == len(stages) - 1:
                self.count_step(c)
            if self.generation is not None and self.generation["kind"] == "step":
                kind = self.generation["head"]
                if kind == "softmax":
                    c("if (logits)", f"    for (j = 0; j < {ch.output_size}; j++) logits[j] = logf(cur[j]);")
                else:
                    c("if (logits)", f"    for (j = 0; j < {ch.output_size}; j++) logits[j] = cur[j];")
            elif not head_logits:
                c("(void)logits;")
            c("if (output)", f"    for (j = 0; j < {ch.output_size}; j++) output[j] = cur[j];")
            c(f"return {self.P}OK;")
        self.emit_function(f"/* One time step of the chain: the input, its mask (when use_mask), every layer; the\n"
                           f"   output (if not null) and the logits for generation (if not null). */\n"
                           f"static int {p}run_step(NAME_STATE *s, {self.input_decl()}, int use_mask, float *output, "
                           f"float *logits)", c)

    def count_step(self, c):
        """Flags, not counters: a stream may run for days (a counter would overflow)."""
        c("s->stepped = 1;")
        if self.chain.mask is not None:
            c("if (valid)", "    s->stepped_valid = 1;")

    def emit_finish(self):
        """finish: the layers after the reduction (a recurrent final state or the last step),
        from the reduced vector to the output."""
        ch, p = self.chain, self.p
        reducer = ch.reducer
        stages = ch.stages
        idx = stages.index(reducer)
        c = Code()
        c.depth = 1
        if reducer.kind == "select":
            c("const float *cur = s->last;")
        elif ch.causal:
            c(f"const float *cur = s->state + {reducer.state_offset};")
        else:
            c("const float *cur = s->reduced;")
        where = None
        for stage in stages[idx + 1:]:
            dst = 0 if where != 0 else 1
            self.vector_stage(c, stage, "cur", f"s->work[{dst}]")
            c(f"cur = s->work[{dst}];")
            where = dst
        c(f"for (j = 0; j < {ch.output_size}; j++)", "    output[j] = cur[j];")
        self.emit_function(f"/* The layers after the time axis ends, from the reduced vector to the output "
                           f"({ch.output_size}) */\nstatic void {p}finish(NAME_STATE *s, float *output)", c,
                           )

    # -- whole sequences (chains with a layer that runs backward in time) ------------------------------
    def emit_sequence_recurrent(self, stage):
        """nK_sequence: a recurrent node over a whole sequence x (T, I) with L valid steps."""
        layer = stage.layer
        p, tag = self.p, self.node_tag(stage)
        H, Ho, D = layer.hidden_size, layer.output_size_per_direction, layer.num_directions
        I = layer.input_size
        c = Code()
        c.depth = 1
        c("int t;")
        if not layer.return_sequences:
            c("(void)T; /* the final states: only the L valid steps matter */")
        per = Ho + (H if layer.cell == "lstm" else 0)
        concat = layer.merge_mode == "concat"
        F = layer.output_size
        for d in range(D):
            backward = d == 1 or layer.reverse or layer.go_backwards
            h = f"s->state + {stage.state_offset + d * per}"
            cc = f", s->state + {stage.state_offset + d * per + Ho}" if layer.cell == "lstm" else ""
            if layer.return_sequences:
                if D == 1:
                    out, stride, off = "y", Ho, 0
                elif concat:
                    out, stride, off = "y", 2 * Ho, d * Ho
                else:
                    out, stride, off = ("y" if d == 0 else "s->seq_dir"), Ho, 0
                at = f"(long)t * {stride} + {off} + j" if off else f"(long)t * {stride} + j"
            c(f"/* direction {d}: {'from the last valid step back to step 0' if backward else 'steps 0 .. L-1'} */")
            loop = "for (t = L - 1; t >= 0; t--)" if backward else "for (t = 0; t < L; t++)"
            c.open(loop)
            c(f"{p}{tag}_d{d}(s, x + (long)t * {I}, {h}{cc});")
            if layer.return_sequences:
                c(f"for (j = 0; j < {Ho}; j++)", f"    {out}[{at}] = ({h})[j];")
            c.close()
            if layer.return_sequences:
                hold = layer.masked_output == "hold" and not backward and D == 1
                value = f"(L > 0 ? ({h})[j] : 0.0f)" if hold else "0.0f"
                c("for (t = L; t < T; t++)",
                  f"    for (j = 0; j < {Ho}; j++) {out}[{at}] = {value};")
                if layer.go_backwards:
                    c("/* go_backwards: output t is step t of the reversed scan */")
                    c.open("for (t = 0; t < T / 2; t++)")
                    c.open(f"for (j = 0; j < {Ho}; j++)")
                    c(f"const float keep = y[(long)t * {Ho} + j];")
                    c(f"y[(long)t * {Ho} + j] = y[(long)(T - 1 - t) * {Ho} + j];")
                    c(f"y[(long)(T - 1 - t) * {Ho} + j] = keep;")
                    c.close()
                    c.close()
        if layer.return_sequences and D == 2 and not concat:
            c(f"for (t = 0; t < T; t++)")
            c.depth += 1
            c.open(f"for (j = 0; j < {Ho}; j++)")
            c(f"const float a = y[(long)t * {Ho} + j], b = s->seq_dir[(long)t * {Ho} + j];")
            c(f"y[(long)t * {Ho} + j] = {merge_expr(layer.merge_mode)};")
            c.close()
            c.depth -= 1
        if not layer.return_sequences:
            hs = [f"s->state + {stage.state_offset + d * per}" for d in range(D)]
            c("/* the final state of each direction, merged */")
            if D == 1:
                c(f"for (j = 0; j < {Ho}; j++)", f"    y[j] = ({hs[0]})[j];")
            elif concat:
                c(f"for (j = 0; j < {Ho}; j++)", f"    y[j] = ({hs[0]})[j];")
                c(f"for (j = 0; j < {Ho}; j++)", f"    y[{Ho} + j] = ({hs[1]})[j];")
            else:
                c.open(f"for (j = 0; j < {Ho}; j++)")
                c(f"const float a = ({hs[0]})[j], b = ({hs[1]})[j];")
                c(f"y[j] = {merge_expr(layer.merge_mode)};")
                c.close()
        self.sizes["seq_dir"] = max(self.sizes.get("seq_dir", 0), Ho if (D == 2 and not concat) else 0)
        out_desc = f"y (T, {F})" if layer.return_sequences else f"y ({F})"
        self.emit_function(f"/* {self.stage_comment(stage)} over a whole sequence: x (T, {I}) with L valid steps -> "
                           f"{out_desc} */\nstatic void {p}{tag}_sequence(NAME_STATE *s, const float *x, int T, int L, "
                           f"float *y)", c)

    def emit_predict_sequence(self):
        """predict for a chain that is not causal: every stage over the whole sequence."""
        ch, p, P = self.chain, self.p, self.P
        c = Code()
        c.depth = 1
        c("int t, L;", "const float *cur;")
        xs = "tokens" if ch.takes_tokens else "x"
        c(f"if (steps < 0 || steps > {P}MAX_STEPS)", f"    return {P}ERR_STEPS;")
        self.predict_checks(c)
        seq = ["s->seq[0]", "s->seq[1]"]
        where = None
        cur_set = False
        reducer = ch.reducer
        done_reduce = False
        fmax = 0
        for stage in ch.stages:
            kind, tag = stage.kind, self.node_tag(stage)
            if done_reduce:
                dst = 0 if where != 0 else 1
                self.vector_stage(c, stage, "cur", f"s->work[{dst}]")
                c(f"cur = s->work[{dst}];")
                where = dst
                continue
            if kind == "embedding":
                c(f"for (t = 0; t < steps; t++)", f"    {p}{tag}({xs}[t], {seq[0]} + (long)t * {stage.out_size});")
                c(f"cur = {seq[0]};")
                where, cur_set = 0, True
                fmax = max(fmax, stage.out_size)
                continue
            if not cur_set:
                c(f"cur = {xs};")
                cur_set = True
            if kind == "masking":
                continue
            if kind == "select":
                c("if (steps < 1)", f"    return {P}ERR_STEPS;")
                c(f"cur = cur + (long)(steps - 1) * {stage.in_size};")
                done_reduce, where = True, None
                continue
            if kind == "recurrent":
                if stage.reduces:
                    c(f"{p}{tag}_sequence(s, cur, steps, L, s->reduced);")
                    c("cur = s->reduced;")
                    self.sizes["reduced"] = stage.out_size
                    done_reduce, where = True, None
                    continue
                dst = 0 if where != 0 else 1
                c(f"{p}{tag}_sequence(s, cur, steps, L, {seq[dst]});")
            else:
                dst = 0 if where != 0 else 1
                c.open("for (t = 0; t < steps; t++)")
                c(f"const float *in = cur + (long)t * {stage.in_size};")
                c(f"float *out = {seq[dst]} + (long)t * {stage.out_size};")
                self.vector_stage(c, stage, "in", "out")
                c.close()
            fmax = max(fmax, stage.out_size)
            c(f"cur = {seq[dst]};")
            where = dst
        self.sizes["seq"] = max(fmax, 1)
        n = f"(long)steps * {ch.output_size}" if ch.output_per_step else str(ch.output_size)
        c(f"for (t = 0; t < {n}; t++)", "    outputs[t] = cur[t];")
        c(f"return {P}OK;")
        self.emit_function(self.predict_head(), c)

    def predict_checks(self, c):
        """Validate every token id and the mask before anything runs; L = the valid steps."""
        ch, P = self.chain, self.P
        if ch.takes_tokens:
            c.open("for (t = 0; t < steps; t++)")
            c(f"if (tokens[t] < 0 || tokens[t] >= {ch.input_size})", f"    return {P}ERR_TOKEN;")
            c.close()
        if ch.mask is None and ch.causal:
            return
        c("L = steps;")
        if ch.mask == "zero_id":
            c("/* id 0 is padding (mask_zero): the exported C takes it at the end only (right padding) */")
            c("while (L > 0 && tokens[L - 1] == 0)", "    L--;")
            c("for (t = 0; t < L; t++)", f"    if (tokens[t] == 0) return {P}ERR_MASK;")
        elif ch.mask == "value":
            F = ch.input_size
            mv = c_float(ch.mask_value)
            c("/* a step whose features all equal the mask value is padding (Masking): only at the end */")
            c.open("for (t = steps - 1; t >= 0; t--)")
            c("int padded = 1;")
            c(f"for (j = 0; j < {F}; j++)", f"    if (x[(long)t * {F} + j] != {mv}) padded = 0;")
            c("if (padded && t == L - 1)", "    L--;")
            c("else if (padded)", f"    return {P}ERR_MASK;")
            c.close()

    def predict_head(self):
        ch, p = self.chain, self.p
        xs = "const int32_t *tokens" if ch.takes_tokens else "const float *x"
        return f"int {p}predict(NAME_STATE *s, {xs}, int steps, float *outputs)"

    def emit_predict_causal(self):
        ch, p, P = self.chain, self.p, self.P
        c = Code()
        c.depth = 1
        c("int t, err;" if ch.mask is None else "int t, L, err;")
        c("if (steps < 0)", f"    return {P}ERR_STEPS;")
        self.predict_checks(c)
        if ch.mask is not None:
            c("(void)L; /* the mask is checked here; the steps see it themselves */")
        arg = "tokens[t]" if ch.takes_tokens else f"x + (long)t * {ch.input_size}"
        if ch.output_per_step:
            c.open("for (t = 0; t < steps; t++)")
            c(f"err = {p}run_step(s, {arg}, 1, outputs + (long)t * {ch.output_size}, 0);")
            c("if (err)", "    return err;")
            c.close()
        else:
            c.open("for (t = 0; t < steps; t++)")
            c(f"err = {p}run_step(s, {arg}, 1, 0, 0);")
            c("if (err)", "    return err;")
            c.close()
            if ch.reducer.kind == "select":
                c("if (!s->stepped)", f"    return {P}ERR_STEPS;")
            c(f"{p}finish(s, outputs);")
        c(f"return {P}OK;")
        self.emit_function(self.predict_head(), c, uses_s=False)

    def emit_public_step(self):
        p = self.p
        c = Code()
        c.depth = 1
        arg = "token" if self.chain.takes_tokens else "x"
        c(f"return {p}run_step(s, {arg}, 1, output, 0);")
        self.emit_function(f"int {p}step(NAME_STATE *s, {self.input_decl()}, float *output)", c, uses_s=False)

    def emit_reset(self):
        ch, p = self.chain, self.p
        c = Code()
        c.depth = 1
        c(f"for (j = 0; j < {max(ch.state_size, 1)}; j++)", "    s->state[j] = 0.0f;")
        if ch.causal:
            c("s->stepped = 0;")
            if ch.mask is not None:
                c("s->stepped_valid = 0;")
        self.emit_function(f"void {p}reset(NAME_STATE *s)", c)

    def emit_generate(self):
        g, p, P = self.generation, self.p, self.P
        V, rows = g["vocab_size"], g["table_rows"]
        c = Code()
        c.depth = 1
        c("int i, n, err;")
        c("if (prompt_length < 1 || max_new_tokens < 0 || !(temperature >= 0.0) || !rng)",
          f"    return {P}ERR_ARGUMENT;")
        c("for (i = 0; i < prompt_length; i++)",
          f"    if (prompt[i] < 0 || prompt[i] >= {rows}) return {P}ERR_TOKEN;")
        feed = f"{p}feed(s, prompt[i], i == prompt_length - 1 ? s->logits : 0)"
        c.open("for (i = 0; i < prompt_length; i++)")
        c(f"err = {feed};")
        c("if (err)", "    return err;")
        c.close()
        c.open("for (n = 0; n < max_new_tokens; n++)")
        c(f"const int32_t token = {p}sample(s->logits, {V}, temperature, rng);")
        c("if (token < 0)", f"    return {P}ERR_LOGITS;")
        c("out[n] = token;")
        c.open("if (n + 1 < max_new_tokens)")
        c(f"err = {p}feed(s, token, s->logits);")
        c("if (err)", "    return err;")
        c.close()
        c.close()
        c("return max_new_tokens;")
        self.use("sample")
        # feed: one token into the chain (one-hot for a model without an Embedding), never masked,
        # as fastrnn's generation loop feeds every token
        f = Code()
        f.depth = 1
        if self.chain.takes_tokens:
            f(f"return {p}run_step(s, token, 0, 0, logits);")
        else:
            f(f"for (j = 0; j < {rows}; j++)", "    s->onehot[j] = 0.0f;")
            f("s->onehot[token] = 1.0f;")
            f(f"return {p}run_step(s, s->onehot, 0, 0, logits);")
        self.emit_function(f"static int {p}feed(NAME_STATE *s, int32_t token, float *logits)", f, uses_s=False)
        self.emit_function(f"int {p}generate(NAME_STATE *s, const int32_t *prompt, int prompt_length, "
                           "int max_new_tokens, double temperature, uint64_t *rng, int32_t *out)", c, uses_s=False)

    def emit_text(self):
        """Tokens (decode), the encoder table (encode) and, for classifiers, the labels."""
        p, P = self.p, self.P
        out = []
        vocab = self.vocab
        if vocab is not None:
            toks = ",\n    ".join(c_string(t) for t in vocab.tokens)
            out.append(f"/* the vocabulary: token i is id i (UTF-8) */\n"
                       f"static const char *const {p}tokens[{len(vocab)}] = {{\n    {toks}\n}};\n")
            c = Code()
            c.depth = 1
            c(f"return id >= 0 && id < {len(vocab)} ? {p}tokens[id] : 0;")
            self.emit_function(f"const char *{p}token(int32_t id)", c, uses_s=False)
        if self.table is not None:
            t = self.table
            self.array(f"{p}code_points", "uint32_t", np.asarray(t.code_points or [0], np.int64),
                       "code points with their own ids (sorted), from fastrnn's vocabulary rules")
            self.array(f"{p}code_start", "uint16_t" if len(t.ids) < 65536 else "uint32_t",
                       np.asarray(t.start, np.int64), "code point i gives ids[code_start[i] .. code_start[i + 1])")
            self.array(f"{p}code_ids", "int32_t", np.asarray(t.ids or [0], np.int64),
                       "the ids (-1: a character the vocabulary has no id for)")
            self.use("utf8")
            n = len(t.code_points)
            c = Code()
            c.depth = 1
            c("const unsigned char *at = (const unsigned char *)text;", "int count = 0;")
            c.open("while (*at)")
            c(f"const uint32_t cp = {p}utf8_next(&at);")
            c(f"int lo = 0, hi = {n}, k;")
            c.open("while (lo < hi)")
            c("const int mid = (lo + hi) / 2;")
            c(f"if ({p}code_points[mid] < cp)", "    lo = mid + 1;", "else", "    hi = mid;")
            c.close()
            c.open(f"if (lo < {n} && {p}code_points[lo] == cp)")
            c.open(f"for (k = {p}code_start[lo]; k < {p}code_start[lo + 1]; k++)")
            c(f"if ({p}code_ids[k] < 0)", f"    return {P}ERR_TEXT;")
            c("if (count < max_ids)", f"    ids[count] = {p}code_ids[k];")
            c("count++;")
            c.close()
            c.close(" else {")
            c.depth += 1
            if t.unknown == -1:
                c(f"return {P}ERR_TEXT;")
            elif t.unknown >= 0:
                c("if (count < max_ids)", f"    ids[count] = {t.unknown};")
                c("count++;")
            else:
                c("/* not in the vocabulary: dropped (drop_unknown) */")
            c.close()
            c.close()
            c("return count;")
            self.emit_function(f"int {p}encode(const char *text, int32_t *ids, int max_ids)", c, uses_s=False)
        if self.classifier is not None:
            labels = ",\n    ".join(c_string(str(x)) for x in self.classifier["labels"])
            out.append(f"/* the class labels (metadata \"labels\", else the class ids) */\n"
                       f"const char *const {p}labels[{len(self.classifier['labels'])}] = {{\n    {labels}\n}};\n")
        return "".join(out)

    # -- putting it together --------------------------------------------------------------------------
    def build(self):
        ch = self.chain
        self.emit_nodes()
        if not ch.causal:
            for stage in ch.stages:
                if stage.kind == "recurrent":
                    self.emit_sequence_recurrent(stage)
        if ch.causal:
            if ch.reducer is not None:
                self.emit_finish()
            self.emit_step()
            self.emit_public_step()
            self.emit_predict_causal()
        else:
            self.emit_predict_sequence()
        self.emit_reset()
        if self.generation is not None:
            self.emit_generate()
        text = self.emit_text()
        return self.header(), self.source_text(text)

    def struct_fields(self):
        ch, P = self.chain, self.P
        sz = self.sizes
        fmax = max([ch.input_size if not ch.takes_tokens else 1] + [s.out_size for s in ch.stages] + [1])
        fields = [
            (f"float state[{max(ch.state_size, 1)}];",
             "recurrent state: per recurrent layer, per direction, h then c (LSTM)"),
        ]
        if ch.causal:
            fields.append(("int32_t stepped;", "1 once a step has run since reset"))
            if ch.mask is not None:
                fields.append(("int32_t stepped_valid;", "1 once a step not masked has run since reset"))
        if ch.reducer is not None and ch.reducer.kind == "select" and ch.causal:
            fields.append((f"float last[{ch.reducer.out_size}];", "the last step's vector (the Select)"))
        if self.generation is not None:
            fields.append((f"float logits[{self.generation['vocab_size']}];", "the next-token logits (generate)"))
            if not ch.takes_tokens:
                fields.append((f"float onehot[{self.generation['table_rows']}];", "the one-hot input of a token"))
        fields.append((f"float work[2][{fmax}];", "work buffers (not state): the vectors between layers"))
        if sz["gates"]:
            fields += [(f"float gates_x[{sz['gates']}];", "work: W_ih x + b_ih of a recurrent step"),
                       (f"float gates_h[{sz['gates']}];", "work: W_hh h + b_hh of a recurrent step")]
        if sz.get("tmp"):
            fields.append((f"float tmp[{sz['tmp']}];", "work: LSTM o * h(c') before its projection, GRU r * h"))
        if sz.get("tmp2"):
            fields.append((f"float tmp2[{sz['tmp2']}];", "work: GRU z, kept while W_hn (r * h) is computed"))
        if self.int8:
            fields += [(f"int8_t xq[{max(sz['mv_k'], 1)}];", "work: an activation row quantized to int8"),
                       (f"int32_t acc[{max(sz['mv_n'], 1)}];", "work: exact int8 sums")]
        if not ch.causal:
            fields.append((f"float seq[2][{P}MAX_STEPS * {sz.get('seq', 1)}];", "work: whole sequences between layers"))
            if sz.get("seq_dir"):
                fields.append((f"float seq_dir[{P}MAX_STEPS * {sz['seq_dir']}];",
                               "work: a backward direction before its merge"))
            if sz.get("reduced"):
                fields.append((f"float reduced[{sz['reduced']}];", "work: the merged final states"))
        return fields

    def header(self):
        ch, p, P, name = self.chain, self.p, self.P, self.name
        guard = f"{P}H_INCLUDED"
        x_decl = "int32_t token" if ch.takes_tokens else "const float *x"
        xs_decl = "const int32_t *tokens" if ch.takes_tokens else "const float *x"
        lines = []
        add = lines.append
        add(f"/* {name}.h: the model {c_comment(self.source)!r} as dependency-free C99, written by fastrnn export-c.")
        add(" *")
        kind = (" (fastrnn's int8 rule: one scale per output row; activations quantized per product)" if self.int8
                else " (the model's own values)")
        add(f" * Weights: {self.weights}{kind}.")
        add(" * Layers: " + c_comment(" -> ".join(_stage_desc(s) for s in ch.stages)) + ".")
        add(" * The model is read-only (static const arrays in the .c); everything that changes lives in a")
        add(f" * {name}_state struct the caller owns: one per stream, no dynamic memory, no globals. Needs <math.h>")
        add(" * (link with -lm) and the compiler's <stdint.h>. Build: cd DIR && cc -O2 *.c -lm -o NAME")
        add(" */")
        add(f"#ifndef {guard}")
        add(f"#define {guard}")
        add("")
        add("#include <stdint.h>")
        add("")
        consts = [
            (f"{P}INPUT_SIZE", ch.input_size,
             "token ids 0 .. INPUT_SIZE-1" if ch.takes_tokens else "features per step"),
            (f"{P}OUTPUT_SIZE", ch.output_size, ("outputs per step" if ch.output_per_step else
                                                  "outputs per sequence (after its last step)")),
            (f"{P}OUTPUT_PER_STEP", int(ch.output_per_step), "1: predict writes steps * OUTPUT_SIZE floats"),
            (f"{P}STATE_SIZE", ch.state_size, "floats of recurrent state in the struct"),
            (f"{P}TAKES_TOKENS", int(ch.takes_tokens), "1: inputs are token ids, 0: float feature vectors"),
            (f"{P}CAN_STEP", int(ch.causal), "1: step exists (every recurrent layer runs forward in time)"),
        ]
        if self.generation is not None:
            consts.append((f"{P}VOCAB_SIZE", self.generation["vocab_size"], "tokens generate can produce"))
        if self.vocab is not None:
            consts.append((f"{P}NUM_TOKENS", len(self.vocab), "entries of the vocabulary table"))
            consts.append((f"{P}UNK_ID", -1 if self.vocab.unk is None else int(self.vocab.unk),
                           "the unknown token's id, -1 if none"))
        if self.classifier is not None:
            consts.append((f"{P}NUM_CLASSES", len(self.classifier["labels"]), "classes of the classifier"))
        for k, v, what in consts:
            add(f"#define {k} {v}  /* {what} */")
        if not ch.causal:
            add(f"#ifndef {P}MAX_STEPS")
            add(f"#define {P}MAX_STEPS {self.max_steps}  /* longest sequence predict takes (a layer runs backward in "
                "time: the whole sequence is held in the state struct); -D to change */")
            add("#endif")
        add("")
        add(f"#define {P}OK 0")
        add(f"#define {P}ERR_TOKEN (-1)     /* a token id outside 0 .. INPUT_SIZE-1 (generate: the vocabulary) */")
        add(f"#define {P}ERR_MASK (-2)      /* padding (masked steps) before the end of the sequence */")
        add(f"#define {P}ERR_STEPS (-3)     /* a number of steps out of range */")
        add(f"#define {P}ERR_ARGUMENT (-4)  /* generate: prompt_length < 1, max_new_tokens < 0, temperature < 0 */")
        add(f"#define {P}ERR_LOGITS (-5)    /* generate: NaN or infinite logits */")
        add(f"#define {P}ERR_TEXT (-6)      /* encode: a character the vocabulary has no id for */")
        add("")
        add(f"typedef struct {name}_state {{")
        for decl, what in self.struct_fields():
            add(f"    {decl:<40} /* {what} */")
        add(f"}} {name}_state;")
        add("")
        add(f"/* Zero the recurrent state (a new sequence). */")
        add(f"void {p}reset({name}_state *s);")
        if ch.causal:
            add("")
            fed = "token id" if ch.takes_tokens else f"vector x ({ch.input_size})"
            add(f"/* One time step: feed one {fed} and write the output ({ch.output_size} floats), unless output")
            add(" * is 0 (cheaper: the layers after the last recurrent one are skipped).")
            if not ch.output_per_step:
                add(" * The output is the model's for the sequence ending at this step.")
            if ch.mask:
                add(" * A masked step (" + ("id 0" if ch.mask == "zero_id" else "every feature equal to the mask value")
                    + ") leaves the state as it is, as fastrnn does with padding.")
            add(f" * Returns {P}OK or {P}ERR_TOKEN. */")
            add(f"int {p}step({name}_state *s, {x_decl}, float *output);")
        add("")
        inputs = "tokens (steps ids)" if ch.takes_tokens else f"x (steps, {ch.input_size})"
        outputs = (f"outputs (steps, {ch.output_size})" if ch.output_per_step
                   else f"outputs ({ch.output_size}): the output after the last step")
        add(f"/* Run a sequence, {inputs}, from the current state (reset first for a new sequence);")
        add(f" * {outputs}. As Model.predict of one sequence with initial_state = the struct's")
        add(" * state; the final states are left in it." + ("" if ch.causal else
            f" At most {P}MAX_STEPS steps; each call is one whole sequence."))
        add(f" * Returns {P}OK, {P}ERR_TOKEN, {P}ERR_MASK or {P}ERR_STEPS; nothing runs when an input")
        add(" * is refused. */")
        add(f"int {p}predict({name}_state *s, {xs_decl}, int steps, float *outputs);")
        if self.generation is not None:
            add("")
            add("/* Continue a prompt (prompt_length >= 1 ids) by max_new_tokens ids written to out, from the current")
            add(" * state. temperature 0: greedy, as Model.generate(prompt, n, temperature=0). Above 0: sampled with")
            add(" * SplitMix64 from *rng, the draws of Model.generate(prompt, n, temperature=T, seed=*rng) (top-k,")
            add(" * top-p and the repetition penalty off); *rng advances. The last id in out has not been fed: start")
            add(" * the next prompt with it to continue. Returns the number of ids written, or")
            add(f" * {P}ERR_ARGUMENT, {P}ERR_TOKEN or {P}ERR_LOGITS. */")
            add(f"int {p}generate({name}_state *s, const int32_t *prompt, int prompt_length, int max_new_tokens,")
            add(" " * len(f"int {p}generate(") + "double temperature, uint64_t *rng, int32_t *out);")
        if self.vocab is not None:
            add("")
            add(f"/* The text of token id (UTF-8; 0 when id is out of range). Tokens join with "
                f"{'nothing' if self.vocab.level == 'char' else 'a space'}. */")
            add(f"const char *{p}token(int32_t id);")
            add(f"#define {P}TOKEN_SEPARATOR \"{'' if self.vocab.level == 'char' else ' '}\"")
        if self.table is not None:
            add("")
            add("/* UTF-8 text -> token ids with the model's vocabulary rules (lower-casing, unknown id): returns how")
            add(" * many ids the text has (only the first max_ids are written), or " + P + "ERR_TEXT. */")
            add(f"int {p}encode(const char *text, int32_t *ids, int max_ids);")
        if self.classifier is not None:
            add("")
            add(f"extern const char *const {p}labels[{len(self.classifier['labels'])}];")
        add("")
        add(f"#endif /* {guard} */")
        return "\n".join(lines) + "\n"

    def source_text(self, text_tables):
        name = self.name
        parts = [f"/* {name}.c: written by fastrnn export-c; see {name}.h. Generated: change the model, not this "
                 "file. */\n",
                 "#include <math.h>\n", f"#include \"{name}.h\"\n\n"]
        parts.append("/* ---- weights ---- */\n\n")
        parts.extend(a + "\n" for a in self.arrays)
        if text_tables:
            parts.append("/* ---- vocabulary ---- */\n\n" + text_tables + "\n")
        parts.append("/* ---- kernels ---- */\n\n")
        for n in runtime.closure(self.used):
            parts.append(runtime.SNIPPETS[n].replace("$p_", self.p).replace("$P_", self.P) + "\n")
        parts.append("/* ---- layers and loops ---- */\n\n")
        parts.extend(f + "\n" for f in self.funcs)
        return "".join(parts).replace("NAME_STATE", f"{name}_state")


def merge_expr(mode):
    return {"sum": "a + b", "mul": "a * b", "ave": "(a + b) / 2.0f"}[mode]


def _stage_desc(stage):
    layer = stage.layer
    if stage.kind == "recurrent":
        return (f"{layer.type_name()}({layer.hidden_size}" + (f", proj {layer.proj_size}" if layer.proj_size else "")
                + (", peepholes" if any(w.peephole is not None for w in layer.directions) else "")
                + ("" if layer.return_sequences else ", last state") + ")")
    if stage.kind == "dense":
        return f"Dense({layer.output_size}" + ("" if layer.activation == "linear" else f", {layer.activation}") + ")"
    if stage.kind == "embedding":
        return f"Embedding({layer.vocab_size}, {layer.output_size}" + (", mask_zero" if layer.mask_zero else "") + ")"
    if stage.kind == "activation":
        return f"Activation({layer.function})"
    if stage.kind == "select":
        return "last step"
    return type(layer).__name__
