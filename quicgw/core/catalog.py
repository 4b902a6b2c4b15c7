"""The model catalog: models with a quality score per task type and a latency model per GPU.

Sources (public, cited so the numbers can be checked):

* Quality: Meta's model cards (github.com/meta-llama/llama-models, "MODEL_CARD.md" for
  Llama 3.1 and Llama 3.2), instruction-tuned models: MMLU (5-shot) as the ``general`` task and
  GSM8K (8-shot, CoT) as ``math``. Scores are accuracies in [0, 1]; the poster's score is the
  model's accuracy if the deadline is met.
* GPUs: vendor datasheets. Memory bandwidth A100-80GB SXM 2,039 GB/s, H100-80GB SXM
  3,350 GB/s, L4 300 GB/s, A10G 600 GB/s; dense BF16 tensor throughput 312, 989, 121 and
  125 TFLOP/s.
* Latency: decoding is memory-bound, so a decode step costs roughly the time to read the weights
  (``weight_bytes / (bandwidth * 0.8)``) plus a per-sequence term for reading each sequence's KV
  cache and sampling; prefill is compute-bound at about ``2 * params`` FLOPs per token at 50%
  of peak. Models that do not fit one GPU use tensor parallelism over ``tp`` GPUs at 90%
  scaling efficiency.
* Calibration (issue 2): Llama-3.1-8B on A100-80GB with ``max_batch`` 32 saturates at 77.2
  requests per minute under the calibration workload (512 input and 1,024 output tokens per
  request), inside the 75-80 RPM the IBM paper measured for that model and GPU on vLLM
  (shared/seeds/000). ``python -m quicgw.bench.backend`` measures it on the emulated backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from quicgw.core.latency import LatencyModel

DECODE_BANDWIDTH_EFFICIENCY = 0.8
PREFILL_FLOPS_EFFICIENCY = 0.5
TENSOR_PARALLEL_EFFICIENCY = 0.9
BYTES_PER_PARAM = 2  # BF16 weights
GPU_MEMORY_RESERVED = 0.1  # activations, CUDA context, fragmentation

CALIBRATION_WORKLOAD = {"input_tokens": 512, "output_tokens": 1024}


@dataclass(frozen=True, slots=True)
class GPU:
    name: str
    memory_gb: float
    bandwidth_gbps: float  # GB/s
    bf16_tflops: float
    hourly_cost: float  # on-demand USD per GPU-hour, indicative; used to weigh plans by cost


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    size: str  # small | medium | large
    params_b: float  # billions of parameters
    kv_bytes_per_token: int  # 2 (K,V) * layers * kv_heads * head_dim * 2 bytes
    quality: dict[str, float]
    per_seq_decode_s: float  # per-sequence decode cost on an A100-80GB; scaled by bandwidth
    max_batch: int = 32


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("a100-80gb", 80, 2039, 312, 3.67),
        GPU("h100-80gb", 80, 3350, 989, 6.98),
        GPU("l4-24gb", 24, 300, 121, 0.81),
        GPU("a10g-24gb", 24, 600, 125, 1.21),
    )
}

MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        # Llama 3.2 1B Instruct: 16 layers, 8 KV heads, head dim 64.
        Model("llama-3.2-1b", "small", 1.24, 2 * 16 * 8 * 64 * 2,
              {"general": 0.493, "math": 0.444}, per_seq_decode_s=0.00015),
        # Llama 3.1 8B Instruct: 32 layers, 8 KV heads, head dim 128.
        Model("llama-3.1-8b", "medium", 8.03, 2 * 32 * 8 * 128 * 2,
              {"general": 0.694, "math": 0.845}, per_seq_decode_s=0.0004),
        # Llama 3.1 70B Instruct: 80 layers, 8 KV heads, head dim 128.
        Model("llama-3.1-70b", "large", 70.6, 2 * 80 * 8 * 128 * 2,
              {"general": 0.836, "math": 0.951}, per_seq_decode_s=0.0010),
    )
}

SIZE_ALIASES = {m.size: m.name for m in MODELS.values()}
TASKS = ("general", "math")
DEFAULT_TASK = "general"


def resolve_model(name: str) -> Model:
    """A model by catalog name or by size alias (small, medium, large)."""
    name = SIZE_ALIASES.get(name, name)
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join([*MODELS, *SIZE_ALIASES])
        raise KeyError(f"unknown model {name!r} (known: {known})") from None


def resolve_gpu(name: str) -> GPU:
    try:
        return GPUS[name]
    except KeyError:
        raise KeyError(f"unknown GPU {name!r} (known: {', '.join(GPUS)})") from None


def tensor_parallel(model: Model, gpu: GPU) -> int:
    """GPUs one instance of ``model`` needs on ``gpu`` (powers of two, as engines require)."""
    weights_gb = model.params_b * BYTES_PER_PARAM
    tp = 1
    while weights_gb > gpu.memory_gb * tp * (1 - GPU_MEMORY_RESERVED) * 0.8:
        tp *= 2
        if tp > 8:
            raise ValueError(f"{model.name} does not fit on 8 x {gpu.name}")
    return tp


def quality(model: str, task: str = DEFAULT_TASK) -> float:
    m = resolve_model(model)
    try:
        return m.quality[task]
    except KeyError:
        raise KeyError(f"no quality for task {task!r} on {m.name} (tasks: {TASKS})") from None


def latency_model(model: str, gpu: str, max_batch: int | None = None) -> LatencyModel:
    """The latency model of one instance of ``model`` on ``gpu`` (tensor parallel if needed)."""
    m, g = resolve_model(model), resolve_gpu(gpu)
    tp = tensor_parallel(m, g)
    scale = tp * (TENSOR_PARALLEL_EFFICIENCY if tp > 1 else 1.0)
    bandwidth = g.bandwidth_gbps * 1e9 * DECODE_BANDWIDTH_EFFICIENCY * scale
    flops = g.bf16_tflops * 1e12 * PREFILL_FLOPS_EFFICIENCY * scale
    weight_bytes = m.params_b * 1e9 * BYTES_PER_PARAM
    kv_bytes = (g.memory_gb * tp * (1 - GPU_MEMORY_RESERVED)) * 1e9 - weight_bytes
    per_seq = m.per_seq_decode_s * (GPUS["a100-80gb"].bandwidth_gbps * 1.0) / (
        g.bandwidth_gbps * scale)
    return LatencyModel(
        prefill_s_per_token=2 * m.params_b * 1e9 / flops,
        decode_base_s=weight_bytes / bandwidth,
        decode_per_seq_s=per_seq,
        max_batch=max_batch or m.max_batch,
        kv_capacity_tokens=max(1, int(kv_bytes // m.kv_bytes_per_token)),
    )
