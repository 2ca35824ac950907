"""The server's metrics, rendered in Prometheus' text exposition format (version 0.0.4).

Counters, gauges and histograms with labels, updated from the event loop and the engine threads
(one lock per metric family), read by ``GET /metrics``. Written here rather than taken from
prometheus_client: the format is a few lines and the server needs nothing else of that package.
"""
from __future__ import annotations

import bisect
import math
import threading

# time to first token / inter-token latency buckets (seconds)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# rows decoding per step
OCCUPANCY_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values)) + "}"


def _number(x) -> str:
    if isinstance(x, int):
        return str(x)
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


class _Family:
    kind = ""

    def __init__(self, name, help_text, labels=()):
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._lock = threading.Lock()
        self._values = {}

    def _key(self, labels):
        if len(labels) != len(self.label_names):
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {labels}")
        return tuple(str(v) for v in labels)

    def header(self):
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Family):
    kind = "counter"

    def inc(self, *labels, amount=1):
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, *labels):
        with self._lock:
            return self._values.get(self._key(labels), 0)

    def render(self):
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0)]
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value, *labels):
        key = self._key(labels)
        with self._lock:
            self._values[key] = value


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name, help_text, labels=(), buckets=LATENCY_BUCKETS):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(buckets)

    def _cell(self, key):
        cell = self._values.get(key)
        if cell is None:
            cell = self._values[key] = [[0] * (len(self.buckets) + 1), 0.0]  # per-bucket counts, sum
        return cell

    def observe(self, value, *labels):
        self.observe_many((value,), *labels)

    def observe_many(self, values, *labels):
        key = self._key(labels)
        with self._lock:
            counts, _ = cell = self._cell(key)
            for v in values:
                counts[bisect.bisect_left(self.buckets, v)] += 1
                cell[1] += v

    def count(self, *labels):
        with self._lock:
            cell = self._values.get(self._key(labels))
            return sum(cell[0]) if cell else 0

    def render(self):
        with self._lock:
            items = sorted((k, (list(c[0]), c[1])) for k, c in self._values.items())
        lines = self.header()
        for key, (counts, total) in items:
            cumulative = 0
            for bound, n in zip(self.buckets + (math.inf,), counts):
                cumulative += n
                names = self.label_names + ("le",)
                lines.append(f"{self.name}_bucket{_labels(names, key + (_number(float(bound)),))} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {cumulative}")
        return lines


class Metrics:
    """Every metric the server exports (names prefixed fastrnn_)."""

    def __init__(self):
        self.requests = Counter("fastrnn_requests_total", "HTTP requests answered, by endpoint and status code.",
                                ("endpoint", "status"))
        self.prompt_tokens = Counter("fastrnn_prompt_tokens_total", "Prompt tokens read, by model.", ("model",))
        self.generated_tokens = Counter("fastrnn_generated_tokens_total", "Tokens generated, by model.", ("model",))
        self.streams = Counter("fastrnn_streams_total", "Generation streams ended, by model and reason "
                               "(stop, length, cancelled, error).", ("model", "reason"))
        self.classified = Counter("fastrnn_classified_inputs_total", "Texts classified, by model.", ("model",))
        self.classify_batches = Counter("fastrnn_classify_batches_total",
                                        "Batches run by the classifiers (requests arriving together share one).",
                                        ("model",))
        self.steps = Counter("fastrnn_steps_total", "Batched generation steps, by model.", ("model",))
        self.active_rows = Gauge("fastrnn_batch_active_rows", "Rows decoding or reading a prompt now, by model.",
                                 ("model",))
        self.capacity = Gauge("fastrnn_batch_capacity", "Rows of the batch (--max-batch), by model.", ("model",))
        self.occupancy = Histogram("fastrnn_batch_occupancy", "Rows in use at each batched step, by model.",
                                   ("model",), OCCUPANCY_BUCKETS)
        self.queue = Gauge("fastrnn_queue_length", "Streams or classify requests waiting for the model, by model.",
                           ("model",))
        self.ttft = Histogram("fastrnn_time_to_first_token_seconds",
                              "From a request's arrival to its stream's first generated token.", ("model",))
        self.itl = Histogram("fastrnn_inter_token_latency_seconds",
                             "Time between two consecutive tokens of a stream.", ("model",))

    def families(self):
        return [v for v in vars(self).values() if isinstance(v, _Family)]

    def render(self) -> str:
        lines = []
        for family in self.families():
            lines.extend(family.render())
        return "\n".join(lines) + "\n"
