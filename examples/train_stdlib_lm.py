"""Train a small Llama-style decoder on the Python standard library and export it to ONNX.

Random weights say nothing about what quantization costs; a trained model's perplexity does. This
script makes such a model in a few CPU minutes:

* **Data**: the ``.py`` sources of this Python's standard library (``sysconfig`` ``stdlib``
  path, without its test suites), split by file: files ordered by the SHA-256 of their relative
  path go to the held-out eval set (files up to 40 KB, until it holds ~200 KB) and the rest to
  training. The split depends only on the file names and sizes, so it is the same on every run
  of the same Python version.
* **Tokenizer**: byte-level BPE (the ``tokenizers`` library) trained on the training files,
  4096 tokens including ``<|endoftext|>``, which separates files in the training stream.
* **Model**: a Llama-style decoder in plain torch (token embedding; per layer RMSNorm,
  grouped-query attention with rotate-half rotary embeddings and a causal plus padding mask,
  RMSNorm, SwiGLU MLP; final RMSNorm; untied LM head), ~5M parameters. Every linear layer is
  ``x @ W`` with ``W`` stored ``[in, out]``, so the export has one ``MatMul`` with a constant
  weight per layer, which is what the compiler quantizes. Sizes are multiples of 128 so the usual
  quantization groups divide them.
* **Training**: AdamW, linear warm-up then cosine decay over the time budget (wall time, so
  the number of steps depends on the machine), on 2 CPU threads (``--threads``), batches of 8
  sequences of 256 tokens.

Writes to ``--out``:

* ``tokenizer.json``: the tokenizer.
* ``eval.txt``: the held-out text (the eval files joined by blank lines).
* ``model.onnx``: inputs ``input_ids`` int64 [batch, seq] and ``attention_mask`` int64
  [batch, seq] (1 = attend, 0 = padding), output ``logits`` float32 [batch, seq, 4096];
  opset 17, ``batch`` and ``seq`` symbolic (rotary tables hold 1024 positions; the model was
  trained on 256).
* ``train_log.json``: configuration, parameter count, steps, tokens seen, seconds, final train
  and eval loss (mean cross-entropy in nats over non-overlapping 256-token eval chunks).

Usage::

    python examples/train_stdlib_lm.py --out /work/stdlib_lm [--minutes 6] [--seed 0] [--threads 2]
    sail eval-ppl /work/stdlib_lm/model.onnx --text /work/stdlib_lm/eval.txt \\
        --tokenizer /work/stdlib_lm/tokenizer.json --bits 4

Needs torch (``pip install torch``); the data and tokenizer helpers do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"
EVAL_TARGET_BYTES = 200_000
MAX_EVAL_FILE_BYTES = 40_000
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
OPSET = 17
THREADS = 2


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder; ``hidden_size = num_heads * head_dim``."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    ffn_size: int = 640
    context: int = 256
    max_positions: int = 1024
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer and batch settings."""

    batch_size: int = 8
    peak_lr: float = 3e-3
    final_lr_fraction: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    log_every_steps: int = 20
    eval_every_seconds: float = 60.0
    eval_probe_chunks: int = 16


def stdlib_sources(root: Path | None = None) -> dict[str, str]:
    """The standard library's ``.py`` files (test suites excluded), ``{relative path: text}``.

    Files that are not UTF-8 are left out.
    """
    root = Path(sysconfig.get_paths()["stdlib"]) if root is None else root
    sources = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIPPED_DIRS.intersection(rel.parts[:-1]):
            continue
        try:
            sources[rel.as_posix()] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return sources


def split_sources(sources: dict[str, str], eval_bytes: int = EVAL_TARGET_BYTES,
                  max_file_bytes: int = MAX_EVAL_FILE_BYTES) -> tuple[list[str], list[str]]:
    """Split file names into (train, eval), deterministically from the names and sizes.

    Files are taken in the order of the SHA-256 of their name; each one no larger than
    ``max_file_bytes`` joins the eval set until it holds ``eval_bytes``; all others train.
    """
    held_out: list[str] = []
    size = 0
    for name in sorted(sources, key=lambda n: hashlib.sha256(n.encode()).hexdigest()):
        n_bytes = len(sources[name].encode())
        if size < eval_bytes and n_bytes <= max_file_bytes:
            held_out.append(name)
            size += n_bytes
    eval_set = set(held_out)
    return [n for n in sorted(sources) if n not in eval_set], sorted(held_out)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenization, lossless decoding).

    Parameters
    ----------
    texts
        Training texts.
    vocab_size
        Tokens in the vocabulary: the 256 byte symbols, ``<|endoftext|>`` (id 0) and merges.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def encode_files(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """The texts' token ids, each file followed by ``<|endoftext|>``, as one int64 array."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    pieces = []
    for encoding in tokenizer.encode_batch(texts):
        pieces += [np.asarray(encoding.ids, dtype=np.int64), np.array([eot], dtype=np.int64)]
    return np.concatenate(pieces)


def build_model(cfg: ModelConfig, seed: int) -> Any:
    """The decoder as a ``torch.nn.Module``: ``forward(input_ids, attention_mask) -> logits``.

    Weights are normal with std 0.02 (output projections scaled by ``1 / sqrt(2 * layers)``),
    norm weights one. Parameter names follow Hugging Face's Llama (``layers.{i}.q_proj``, ...).
    """
    import torch
    from torch import nn

    h, nh, nkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    group = nh // nkv
    gen = torch.Generator().manual_seed(seed)

    def matrix(rows: int, cols: int, std: float = 0.02) -> nn.Parameter:
        return nn.Parameter(torch.randn(rows, cols, generator=gen) * std)

    def ones() -> nn.Parameter:
        return nn.Parameter(torch.ones(h))

    out_std = 0.02 / math.sqrt(2 * cfg.num_layers)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = matrix(cfg.vocab_size, h)
            self.layers = nn.ModuleList(nn.ParameterDict({
                "input_layernorm": ones(),
                "q_proj": matrix(h, nh * hd), "k_proj": matrix(h, nkv * hd),
                "v_proj": matrix(h, nkv * hd), "o_proj": matrix(nh * hd, h, out_std),
                "post_attention_layernorm": ones(),
                "gate_proj": matrix(h, cfg.ffn_size), "up_proj": matrix(h, cfg.ffn_size),
                "down_proj": matrix(cfg.ffn_size, h, out_std),
            }) for _ in range(cfg.num_layers))
            self.norm = ones()
            self.lm_head = matrix(h, cfg.vocab_size)
            inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
            angles = torch.outer(torch.arange(cfg.max_positions, dtype=torch.float64), inv_freq)
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

        def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_eps) * weight

        def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            batch, seq = input_ids.shape
            positions = torch.arange(seq, device=input_ids.device)
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # [seq, hd / 2]
            causal = positions[None, :] <= positions[:, None]  # [query, key]
            padding = (1.0 - attention_mask.float()) * -1e9  # [batch, key]
            bias = torch.where(causal, 0.0, -1e9) + padding[:, None, None, None, :]
            x = nn.functional.embedding(input_ids, self.embed_tokens)
            for p in self.layers:
                xn = self.rms_norm(x, p["input_layernorm"])
                q = (xn @ p["q_proj"]).view(batch, seq, nh, hd).transpose(1, 2)
                k = (xn @ p["k_proj"]).view(batch, seq, nkv, hd).transpose(1, 2)
                v = (xn @ p["v_proj"]).view(batch, seq, nkv, hd).transpose(1, 2)
                q = self.rotary(q, cos, sin) * (1.0 / math.sqrt(hd))
                k = self.rotary(k, cos, sin)
                # Grouped-query attention by broadcasting: [b, nkv, group, s, hd] x [b, nkv, 1, ...]
                q = q.reshape(batch, nkv, group, seq, hd)
                scores = q @ k.unsqueeze(2).transpose(-1, -2) + bias
                ctx = scores.softmax(-1) @ v.unsqueeze(2)  # [b, nkv, group, s, hd]
                ctx = ctx.reshape(batch, nh, seq, hd).transpose(1, 2).reshape(batch, seq, h)
                x = x + ctx @ p["o_proj"]
                xn = self.rms_norm(x, p["post_attention_layernorm"])
                gate = xn @ p["gate_proj"]
                x = x + (gate * torch.sigmoid(gate) * (xn @ p["up_proj"])) @ p["down_proj"]
            return self.rms_norm(x, self.norm) @ self.lm_head

    return Decoder()


def _learning_rate(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay over the time budget."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    floor = cfg.final_lr_fraction
    return cfg.peak_lr * warm * (floor + (1.0 - floor) * cosine)


def _eval_loss(model: Any, chunks: np.ndarray, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats) over ``chunks`` [n, context + 1]."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(chunks), batch_size):
            batch = torch.from_numpy(chunks[i:i + batch_size])
            logits = model(batch[:, :-1], torch.ones_like(batch[:, :-1]))
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(),
                                                     reduction="sum")
            total += float(loss)
            count += batch[:, 1:].numel()
    model.train()
    return total / count


def train(model: Any, train_ids: np.ndarray, eval_chunks: np.ndarray, model_cfg: ModelConfig,
          cfg: TrainConfig, seconds: float, seed: int) -> dict[str, Any]:
    """Train for ``seconds`` of wall time on random windows of ``train_ids``; print progress."""
    import torch

    rng = np.random.default_rng(seed)
    matrices = [p for p in model.parameters() if p.ndim == 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay},
                                   {"params": vectors, "weight_decay": 0.0}],
                                  lr=cfg.peak_lr, betas=(0.9, 0.95))
    span = model_cfg.context + 1
    probe = eval_chunks[:cfg.eval_probe_chunks]
    started = time.perf_counter()
    last_eval = started
    step, tokens, smoothed = 0, 0, None
    model.train()
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, elapsed / seconds, cfg)
        starts = rng.integers(0, len(train_ids) - span, cfg.batch_size)
        batch = torch.from_numpy(np.stack([train_ids[s:s + span] for s in starts]))
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(inputs, torch.ones_like(inputs))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        tokens += targets.numel()
        value = loss.item()
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        now = time.perf_counter()
        if step % cfg.log_every_steps == 0:
            print(f"step {step:5d}  {(now - started) / 60:5.2f} min  train loss {smoothed:.3f}  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}  {tokens / (now - started):.0f} tok/s",
                  flush=True)
        if now - last_eval >= cfg.eval_every_seconds:
            print(f"step {step:5d}  eval loss (probe, {len(probe)} chunks) "
                  f"{_eval_loss(model, probe, cfg.batch_size):.3f}", flush=True)
            last_eval = time.perf_counter()
    return {"steps": step, "tokens_seen": tokens, "train_seconds": time.perf_counter() - started,
            "final_train_loss": smoothed}


def export_onnx(model: Any, path: Path, vocab_size: int) -> None:
    """Export with the TorchScript exporter at opset 17, ``batch`` and ``seq`` symbolic."""
    import torch

    model.eval()
    ids = torch.randint(0, vocab_size, (1, 16))
    axes = {0: "batch", 1: "seq"}
    with warnings.catch_warnings():  # the exporter's notice that dynamo is the new default
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes},
                          opset_version=OPSET, do_constant_folding=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="torch threads (on a machine shared with other jobs, 1 thread can "
                             "be several times faster than 2 that wait for each other)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("train_stdlib_lm.py needs torch (CPU is enough): pip install torch", file=sys.stderr)
        return 2
    import onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_cfg, train_cfg = ModelConfig(), TrainConfig()

    sources = stdlib_sources()
    train_names, eval_names = split_sources(sources)
    eval_text = "\n\n".join(sources[n] for n in eval_names)
    (out / "eval.txt").write_text(eval_text, encoding="utf-8")
    print(f"data: {len(train_names)} train files "
          f"({sum(len(sources[n].encode()) for n in train_names) / 1e6:.1f} MB), "
          f"{len(eval_names)} eval files ({len(eval_text.encode()) / 1e3:.0f} KB) -> "
          f"{out / 'eval.txt'}", flush=True)

    tokenizer = train_tokenizer((sources[n] for n in train_names), model_cfg.vocab_size)
    assert tokenizer.get_vocab_size() == model_cfg.vocab_size, tokenizer.get_vocab_size()
    tokenizer.save(str(out / "tokenizer.json"))
    train_ids = encode_files(tokenizer, [sources[n] for n in train_names])
    eval_ids = np.asarray(tokenizer.encode(eval_text).ids, dtype=np.int64)
    span = model_cfg.context + 1
    eval_chunks = eval_ids[:len(eval_ids) // span * span].reshape(-1, span)
    print(f"tokenizer: {model_cfg.vocab_size} tokens -> {out / 'tokenizer.json'}; "
          f"{len(train_ids)} train tokens, {len(eval_ids)} eval tokens", flush=True)

    model = build_model(model_cfg, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, {model_cfg.num_layers} layers, hidden "
          f"{model_cfg.hidden_size}, GQA {model_cfg.num_heads}/{model_cfg.num_kv_heads} heads, "
          f"context {model_cfg.context}; training {args.minutes:g} min on {args.threads} thread(s)",
          flush=True)
    log = train(model, train_ids, eval_chunks, model_cfg, train_cfg, args.minutes * 60, args.seed)
    eval_loss = _eval_loss(model, eval_chunks, train_cfg.batch_size)
    print(f"eval loss {eval_loss:.4f} (perplexity {math.exp(eval_loss):.2f}) over "
          f"{eval_chunks.size - len(eval_chunks)} tokens in {len(eval_chunks)} chunks of "
          f"{model_cfg.context}", flush=True)

    model_path = out / "model.onnx"
    export_onnx(model, model_path, model_cfg.vocab_size)
    onnx.checker.check_model(onnx.load(str(model_path)))
    print(f"exported {model_path}", flush=True)
    record = {
        "python": sys.version.split()[0], "torch": torch.__version__, "seed": args.seed,
        "threads": args.threads,
        "model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
        "params": n_params, "train_files": len(train_names), "eval_files": len(eval_names),
        "train_tokens": len(train_ids), "eval_tokens": len(eval_ids), **log,
        "final_eval_loss": eval_loss, "eval_loss_tokens": eval_chunks.size - len(eval_chunks),
        "eval_loss_chunk": model_cfg.context,
    }
    (out / "train_log.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out / 'train_log.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
