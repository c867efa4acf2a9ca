"""Server metrics in Prometheus' text format, under vLLM's names (`vllm:*`), so dashboards and
scrapers written for vLLM read ours unchanged. Written by hand: no prometheus_client needed.

Definitions (vLLM's): time to first token = arrival -> first generated token; inter-token latency
= time between consecutive tokens of one request; time per output token = (last token - first
token) / (tokens - 1) per request; end-to-end latency = arrival -> finish.
"""

from __future__ import annotations

import threading

_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


class Histogram:
    def __init__(self, buckets=_LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = [
            f'{name}_bucket{{{labels},le="{b}"}} {c}'
            for b, c in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class Metrics:
    def __init__(self, model_name: str) -> None:
        self.labels = f'model_name="{model_name}"'
        self._lock = threading.Lock()
        self.running = self.waiting = 0
        self.prompt_tokens = self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self.http: dict[tuple[str, int], int] = {}
        self.ttft, self.itl, self.tpot, self.e2e = (
            Histogram(),
            Histogram(),
            Histogram(),
            Histogram(),
        )

    def set_queue(self, running: int, waiting: int) -> None:
        self.running, self.waiting = running, waiting

    def on_token(self, seq, now: float) -> None:
        with self._lock:
            self.generation_tokens += 1
            if seq.first_token_at is None:
                self.prompt_tokens += len(seq.ids) - 1
                self.ttft.observe(now - seq.arrival)
            else:
                self.itl.observe(now - seq.last_token_at)

    def on_finish(self, seq, reason: str, now: float) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.e2e.observe(now - seq.arrival)
            n = len(seq.out)
            if n > 1 and seq.first_token_at is not None:
                self.tpot.observe((seq.last_token_at - seq.first_token_at) / (n - 1))

    def on_http(self, path: str, status: int) -> None:
        with self._lock:
            self.http[(path, status)] = self.http.get((path, status), 0) + 1

    def render(self) -> str:
        L, lab = [], self.labels
        with self._lock:

            def one(name, kind, help_, value):
                L.extend(
                    [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name}{{{lab}}} {value}"]
                )  # noqa: E501

            one(
                "vllm:num_requests_running",
                "gauge",
                "Sequences in the running batch.",
                self.running,
            )
            one("vllm:num_requests_waiting", "gauge", "Sequences waiting for a slot.", self.waiting)
            one(
                "vllm:prompt_tokens_total",
                "counter",
                "Prefilled prompt tokens.",
                self.prompt_tokens,
            )
            one(
                "vllm:generation_tokens_total",
                "counter",
                "Generated tokens.",
                self.generation_tokens,
            )
            L += [
                "# HELP vllm:request_success_total Finished sequences by reason.",
                "# TYPE vllm:request_success_total counter",
            ]
            for reason, n in sorted(self.finished.items()):
                L.append(f'vllm:request_success_total{{{lab},finished_reason="{reason}"}} {n}')
            for name, h, help_ in [
                ("vllm:time_to_first_token_seconds", self.ttft, "Arrival to first token."),
                ("vllm:inter_token_latency_seconds", self.itl, "Time between two tokens."),
                ("vllm:time_per_output_token_seconds", self.tpot, "Mean gap per request."),
                ("vllm:e2e_request_latency_seconds", self.e2e, "Arrival to finish."),
            ]:
                L += [f"# HELP {name} {help_}", f"# TYPE {name} histogram", *h.lines(name, lab)]
            L += [
                "# HELP modelworks:http_responses_total HTTP responses by path and status.",
                "# TYPE modelworks:http_responses_total counter",
            ]
            for (path, status), n in sorted(self.http.items()):
                L.append(f'modelworks:http_responses_total{{path="{path}",status="{status}"}} {n}')
        return "\n".join(L) + "\n"
