"""Baselines for the same decode step: the Neoverse-N1 CPU alone, and an NVIDIA V100.

N1: vector dequantize-GEMV
--------------------------
The CPU of the same machine (``config.host``, ``config.dram``) runs the same quantized model as
llama.cpp-style decoding kernels do: activations quantized to 8-bit integers per token (a host
op), then for every weight vector of ``l = simd_bits / 8`` codes (16 on NEON) and every token:

* ``dequantize``: unpack the codes to int8 lanes and subtract the zero point. A ``b``-bit code is
  stored as ``popcount(b)`` power-of-two fields (3 = 2 + 1, 6 = 4 + 2, ...); extracting a field
  costs a shift and an and, merging a further field a shift and an or:
  ``extract(b) = 2 * popcount(b) + 2 * (popcount(b) - 1)`` ops (none for 8 bits), plus 1
  subtract.
* ``dot``: ``ceil(b_a / 8)`` SDOT per vector (int8 x int8 -> int32, four lanes of four).
* ``scale``: per group of ``g`` weights, reduce the int32 lanes, convert and multiply-add the
  float scale: ``3 * l / g`` ops per vector.
* ``overhead``: 0.5 ops per vector (activation loads, address updates, loop; assumption).

The batch runs as B GEMVs over weight tiles that stay in L1/L2, so weights come from DRAM once per
step. How often they are unpacked is the software model, a named choice
(``config.baseline.n1_dequant``, overridden per call by ``amortize_dequant``):

* ``per_token`` (default): once per token, as llama.cpp's CPU ``vec_dot`` kernels do (every dot
  product of a quantized weight block with a token's quantized activations unpacks the block
  again). Chosen by measurement: llama.cpp's batched decode of Gemma 3 270M on this project's
  machine (``docs/reproduction/cpu_calibration.json``) slows per step with the batch as this
  model predicts for that machine.
* ``per_step``: once per step, as a GEMM kernel with an int8 weight tile reused for the whole
  batch would.

The weights stream at ``dram.peak * baseline.n1_dram_efficiency``, the cores' own sustained
fraction (SAIL's weight stream uses ``dram.efficiency``). Time is ``sync + max(weights from
DRAM, SIMD ops / (cores * clock * pipes * efficiency))``: bandwidth- and SIMD-throughput bound.
Host ops cost what they cost on SAIL (:func:`.cost.host_op_cost`).

V100: roofline
--------------
Every op is one kernel: ``launch + max(bytes / (HBM * efficiency), flops / (peak *
efficiency))``. GEMVs read the weights at the model's bit width (``gpu.weights="quantized"``,
with ``gpu.dequant_ops_per_weight`` ops of dequantization per weight) or in fp16, plus fp16
activations, and do ``2 B K N`` flops. Activations stay fp16, so the activation quantization
costs nothing. Host ops move their DRAM bytes and their activations (fp16 on the GPU: half the
CPU's float32 bytes) through HBM. :func:`v100_fits` checks the weights, the KV cache and the
embedding table against the GPU's memory.
"""

from __future__ import annotations

from .config import MachineConfig
from .cost import Cost, host_op_cost, weight_bytes
from .shapes import GemvOp, HostOp, Op, QuantizeOp

__all__ = [
    "N1_COMPONENTS",
    "dequantize_ops",
    "n1_gemv_cost",
    "n1_op_cost",
    "v100_fits",
    "v100_op_cost",
]

#: Time components of the N1 baseline.
N1_COMPONENTS = ("weight_fetch", "dequantize", "dot", "scale", "host")
_OVERHEAD_OPS = 0.5
_PJ_PER_W_NS = 1000.0


def dequantize_ops(bits: int) -> int:
    """SIMD ops to unpack one vector of ``bits``-bit codes to int8 and subtract the zero point."""
    fields = bin(bits).count("1")
    extract = 0 if bits == 8 else 2 * fields + 2 * (fields - 1)
    return extract + 1


def n1_gemv_cost(k: int, n: int, *, bits: int, act_bits: int, group_size: int, batch: int,
                 config: MachineConfig, amortize_dequant: bool | None = None) -> Cost:
    """A quantized ``[B, K] @ [K, N]`` on the N1 cores (module docstring); ``amortize_dequant``
    None follows ``config.baseline.n1_dequant``."""
    host, dram = config.host, config.dram
    if amortize_dequant is None:
        amortize_dequant = config.baseline.n1_dequant == "per_step"
    lanes = host.simd_bits // 8
    k_pad = -(-k // group_size) * group_size
    vectors = k_pad * n / lanes
    ops_per_ns = host.cores * host.clock_ghz * host.simd_pipes * host.vector_efficiency
    dequant_ns = vectors * dequantize_ops(bits) * (1 if amortize_dequant else batch) / ops_per_ns
    dot_ns = vectors * batch * (-(-act_bits // 8) + _OVERHEAD_OPS) / ops_per_ns
    scale_ns = vectors * batch * 3 * lanes / group_size / ops_per_ns
    fetch_bytes = weight_bytes(k, n, bits=bits, group_size=group_size, config=config)
    fetch_ns = dram.latency_ns + fetch_bytes / (dram.peak_gbps
                                                * config.baseline.n1_dram_efficiency)
    total = host.sync_ns + max(fetch_ns, dequant_ns + dot_ns + scale_ns)
    energy = (host.cores * config.energy.core_active_w * total * _PJ_PER_W_NS
              + fetch_bytes * config.energy.dram_pj_per_byte)
    return Cost(total, {"weight_fetch": fetch_ns, "dequantize": dequant_ns, "dot": dot_ns,
                        "scale": scale_ns, "host": 0.0},
                {"cores_and_dram": energy,
                 "static": config.energy.static_w * total * _PJ_PER_W_NS},
                {"dram": fetch_bytes})


def n1_op_cost(op: Op, *, bits: int, act_bits: int, group_size: int, batch: int,
               config: MachineConfig, amortize_dequant: bool | None = None) -> Cost:
    """Any op of a decode step on the N1 baseline."""
    if isinstance(op, GemvOp):
        return n1_gemv_cost(op.k, op.n, bits=bits, act_bits=act_bits, group_size=group_size,
                            batch=batch, config=config, amortize_dequant=amortize_dequant)
    if isinstance(op, QuantizeOp):
        cost = host_op_cost(config, flops=5.0 * batch * op.k,
                            llc_bytes=batch * op.k * (config.data.activation_bits + act_bits) / 8)
    else:
        cost = host_op_cost(config, flops=batch * op.flops, dram_bytes=batch * op.dram_bytes,
                            llc_bytes=batch * op.llc_bytes)
    return Cost(cost.total_ns, {"host": cost.total_ns},
                {"cores_and_dram": cost.energy_pj["host"], "static": cost.energy_pj["static"]},
                {"dram": cost.bytes["dram"]})


def _roofline(config: MachineConfig, bytes_: float, flops: float) -> Cost:
    gpu = config.gpu
    memory_ns = bytes_ / (gpu.hbm_gbps * gpu.mem_efficiency)
    compute_ns = flops / (gpu.peak_tflops * 1000 * gpu.compute_efficiency)
    total = gpu.launch_ns + max(memory_ns, compute_ns)
    return Cost(total, {"launch": gpu.launch_ns, "memory": memory_ns, "compute": compute_ns},
                bytes={"hbm": bytes_})


def v100_op_cost(op: Op, *, bits: int, group_size: int, batch: int,
                 config: MachineConfig) -> Cost:
    """Any op of a decode step on the V100 (module docstring)."""
    if isinstance(op, QuantizeOp):
        return Cost(0.0)
    if isinstance(op, HostOp):
        return _roofline(config, batch * (op.dram_bytes + op.llc_bytes / 2), batch * op.flops)
    quantized = config.gpu.weights == "quantized"
    weights = (weight_bytes(op.k, op.n, bits=bits, group_size=group_size, config=config)
               if quantized else 2.0 * op.k * op.n)
    flops = 2.0 * batch * op.k * op.n
    if quantized:
        flops += config.gpu.dequant_ops_per_weight * op.k * op.n
    return _roofline(config, weights + 2.0 * batch * (op.k + op.n), flops)


def v100_fits(ops: list[Op], *, bits: int, group_size: int, batch: int,
              config: MachineConfig) -> bool:
    """Whether the weights and the KV cache of a decode step fit the GPU's memory."""
    total = 0.0
    for op in ops:
        if isinstance(op, GemvOp):
            total += (weight_bytes(op.k, op.n, bits=bits, group_size=group_size, config=config)
                      if config.gpu.weights == "quantized" else 2.0 * op.k * op.n)
        elif isinstance(op, HostOp):
            total += batch * op.dram_bytes + op.resident_bytes  # KV cache, embedding table
    return total <= config.gpu.memory_gib * 2**30
