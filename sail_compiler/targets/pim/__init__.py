"""Timing-only simulation of SAIL (arXiv 2509.25853) and its CPU and GPU baselines.

* :mod:`.config`: the machine (frozen dataclasses, presets ``sail-n1`` and ``tiny``, TOML
  overrides, validation).
* :mod:`.cost`: SAIL's timing and energy model per op (LUT-GEMV, type conversion, host ops).
* :mod:`.baselines`: the Neoverse-N1 cores alone (dequantize-GEMV) and a V100 roofline.
* :mod:`.shapes`: shape-only decode steps of Llama-2-7B / 13B.
* :mod:`.simulate`: decode steps and sweeps; tokens/s, tokens/$ and speedups.
* :mod:`.report`: stats.json, markdown tables and plots (matplotlib, imported when plotting).
"""

from .config import MachineConfig, load_config, preset
from .cost import Cost, lut_gemv_cost, quantize_cost
from .shapes import MODELS, ModelShape, decode_step, model_shape
from .simulate import ReuseModel, StepResult, Workload, simulate_step, sweep

__all__ = [
    "MODELS",
    "Cost",
    "MachineConfig",
    "ModelShape",
    "ReuseModel",
    "StepResult",
    "Workload",
    "decode_step",
    "load_config",
    "lut_gemv_cost",
    "model_shape",
    "preset",
    "quantize_cost",
    "simulate_step",
    "sweep",
]
