"""Model backends: the built-in emulated backend (an OpenAI-compatible HTTP server whose timing
follows the shared latency model).

Start one:

* in-process, on an ephemeral port::

      async with EmulatedBackend("llama-3.1-8b", "a100-80gb", port=0, time_scale=10) as b:
          ...  # b.url, b.load()

* as a subprocess (``with`` or ``async with``)::

      with BackendProcess("medium", "a100-80gb", time_scale=10) as b:
          ...  # b.url

* from the shell: ``quicgw backend --model llama-3.1-8b --gpu a100-80gb --port 8000``.

What it reports (all durations in MODEL time: wall time x ``time_scale``):

* ``GET /load``: ``running``, ``waiting``, ``max_batch``, ``kv_used_tokens``,
  ``kv_capacity_tokens``, counters ``requests``, ``completed``, ``cancelled``, ``rejected``,
  ``generated_tokens``, the instance clock ``model_time_s``, ``time_scale``, and ``lag_wall_ms``
  (how late, in wall time, tokens left the step loop; large values mean the CPU cannot keep up
  with the time scale).
* ``GET /metrics``: Prometheus text with vLLM's names ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:generation_tokens_total``, ``vllm:request_success_total``.
* Every response: headers ``x-time-scale``, ``x-running``, ``x-waiting`` (load when it started).
* Every finished generation: ``"quicgw_timings": {"time_scale", "queue_ms", "ttft_ms",
  "tpot_ms", "e2el_ms"}`` in the non-streaming response object, and in a stream on the chunk
  with ``finish_reason`` and on the usage chunk. ``queue_ms`` = admitted into the batch -
  arrival; ``ttft_ms`` = first token - arrival; ``tpot_ms`` = mean time per later token;
  ``e2el_ms`` = last token - arrival; arrival is when the request's body was fully received.
  Non-streaming responses also carry them as headers ``x-queue-ms``, ``x-ttft-ms``,
  ``x-e2el-ms``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quicgw.backends.emulated import EmulatedBackend
    from quicgw.backends.process import BackendProcess

__all__ = ["BackendProcess", "EmulatedBackend"]


def __getattr__(name: str):
    # Lazy, so that `quicgw --help` (which imports quicgw.backends.cli) stays fast.
    if name == "EmulatedBackend":
        from quicgw.backends.emulated import EmulatedBackend
        return EmulatedBackend
    if name == "BackendProcess":
        from quicgw.backends.process import BackendProcess
        return BackendProcess
    raise AttributeError(f"module 'quicgw.backends' has no attribute {name!r}")
