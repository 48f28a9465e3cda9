"""Build tiny onnxruntime-genai builder models (random-init Hugging Face checkpoints) as fixtures.

Writes ``tests/fixtures/genai/<family>_<precision>/`` (``model.onnx``, ``model.onnx.data`` when
the builder writes one, ``genai_config.json``) for ``family`` in ``gemma3``, ``llama``,
``qwen2`` and ``precision`` in ``int4``, ``fp32``: what ``python -m
onnxruntime_genai.models.builder -i HF_DIR -o OUT -p PRECISION -e cpu`` writes for a Hugging Face
directory made here with ``torch.manual_seed(0)`` random weights (nothing is downloaded).

* ``gemma3``: ``Gemma3ForCausalLM``, hidden 64, 4 query heads, 1 key/value head, head dim 32,
  4 layers (sliding window 4 on layers 0-2, full attention on layer 3, so a 12-token run
  crosses the window), tied embedding (the int4 build's ``GatherBlockQuantized``), vocabulary
  512, q/k norms, final logit soft-cap off (the builder rejects it).
* ``llama``: ``LlamaForCausalLM``, hidden 64, 4 query heads, 2 key/value heads, 2 layers.
* ``qwen2``: ``Qwen2ForCausalLM`` (q/k/v biases), the same sizes as ``llama``.

Needs torch and transformers: run it with the Python of a venv that has them, e.g. the one
``../shared/models/gemma3_270m/build.sh`` makes (``/root/.cache/sail-models/gemma3_270m/venv``);
``onnxruntime_genai`` is taken from ``--genai-path`` (a site-packages folder holding it) when
that venv has none. Usage::

    VENV=/root/.cache/sail-models/gemma3_270m/venv
    $VENV/bin/python examples/make_genai_fixtures.py \
        --genai-path .venv/lib/python3.11/site-packages [--families gemma3] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "genai"
FAMILIES = ("gemma3", "llama", "qwen2")
PRECISIONS = ("int4", "fp32")
SEED = 0


def save_checkpoint(family: str, out: Path) -> None:
    """A random-init Hugging Face directory of ``family`` (module docstring)."""
    import torch
    import transformers

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                  num_attention_heads=4, max_position_embeddings=256)
    if family == "gemma3":
        config = transformers.Gemma3TextConfig(
            **common, num_hidden_layers=4, num_key_value_heads=1, head_dim=32,
            sliding_window=4, layer_types=["sliding_attention"] * 3 + ["full_attention"],
            final_logit_softcapping=None, attn_logit_softcapping=None,
            query_pre_attn_scalar=32, tie_word_embeddings=True)
        cls = transformers.Gemma3ForCausalLM
    elif family == "llama":
        config = transformers.LlamaConfig(**common, num_hidden_layers=2, num_key_value_heads=2)
        cls = transformers.LlamaForCausalLM
    elif family == "qwen2":
        config = transformers.Qwen2Config(**common, num_hidden_layers=2, num_key_value_heads=2)
        cls = transformers.Qwen2ForCausalLM
    else:
        raise SystemExit(f"unknown family {family}; choose from {', '.join(FAMILIES)}")
    torch.manual_seed(SEED)
    model = cls(config).eval()
    with torch.no_grad():  # random init leaves norm weights at 1 (gemma: 0): perturb them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    path = out / "config.json"
    config = json.loads(path.read_text())
    params = config.get("rope_parameters")
    if family == "gemma3" and params:  # the builder (0.18) reads the flat form (gemma3.py)
        full = params.get("full_attention", params)
        config["rope_theta"] = full["rope_theta"]
        config["rope_local_base_freq"] = params.get("sliding_attention", full)["rope_theta"]
        config["rope_scaling"] = None
    path.write_text(json.dumps(config, indent=1))


#: onnxruntime-genai's builder (0.18) as a ``python -c`` script, with AutoConfig's result
#: flattened: transformers 5 rebuilds the nested rope_parameters from rope_theta /
#: rope_local_base_freq when it reads config.json, and the builder then fails on
#: rope_parameters["rope_type"]. benchmarks/gemma3.py runs the same script.
GENAI_BUILDER = r"""
import runpy, sys
from transformers import AutoConfig
original = AutoConfig.from_pretrained
def from_pretrained(*args, **kwargs):
    config = original(*args, **kwargs)
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "full_attention" in params:
        full = params["full_attention"]
        config.rope_theta = full["rope_theta"]
        config.rope_local_base_freq = params.get("sliding_attention", full)["rope_theta"]
        config.rope_parameters = dict(full)
    return config
AutoConfig.from_pretrained = from_pretrained
sys.argv = ["builder", *sys.argv[1:]]
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
"""


def build(hf: Path, out: Path, precision: str, genai_path: str | None) -> None:
    """Run the builder on ``hf`` into ``out``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if genai_path:
        shim = Path(tempfile.mkdtemp())
        (shim / "onnxruntime_genai").symlink_to(Path(genai_path).resolve() / "onnxruntime_genai")
        env["PYTHONPATH"] = str(shim)
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run([sys.executable, "-c", GENAI_BUILDER, "-i", str(hf), "-o", str(out),
                               "-p", precision, "-e", "cpu", "-c", cache],
                              capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (out / "model.onnx").exists():
        raise SystemExit(f"builder failed for {hf} ({precision}):\n{proc.stderr[-3000:]}")
    for extra in out.iterdir():  # keep the model and its config; tokenizers are not built here
        if extra.name not in ("model.onnx", "model.onnx.data", "genai_config.json"):
            extra.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--genai-path", help="site-packages folder holding onnxruntime_genai")
    args = parser.parse_args(argv)
    for family in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            hf = Path(tmp) / "hf"
            save_checkpoint(family, hf)
            for precision in args.precisions:
                out = args.out_dir / f"{family}_{precision}"
                shutil.rmtree(out, ignore_errors=True)
                build(hf, out, precision, args.genai_path)
                size = sum(f.stat().st_size for f in out.iterdir())
                print(f"{out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
