"""`unmask bench --published-shapes`: loading and decoding at LLaDA-8B's layout, scaled by a stated fraction.

The shapes are those of LLaDA-8B-Instruct's released config.json (GSAI-ML/LLaDA-8B-Instruct;
the same keys as tests/data/reference/llada-tiny/config.json, which LLaDA's own code wrote):
d_model 4096, n_layers 32, n_heads = n_kv_heads 32 (head_dim 128), mlp_hidden_size 12288,
vocab_size = embedding_size 126464, untied output, rope_theta 5e5, max_sequence_length 4096,
released in bfloat16. An 8B model does not fit this project's CPU budget, so the fraction f
scales d_model, mlp_hidden_size, vocab_size and n_layers each by f (head_dim stays 128, so
n_heads = d_model / 128; the ffn:d ratio of 3 is kept). Parameters scale by ~f^2 to f^3, and
the report states every resulting shape; nothing is extrapolated to the full size.

The weights are random (N(0, 0.02), LLaDA's init_std; norms 1), written as a LLaDA-format folder
(config.json, model-0000k-of-0000n.safetensors shards, model.safetensors.index.json) and read back
by the same loader users call (special ids: LLaDA's own where they fit the scaled vocabulary, else
its last ids). Loading runs in a fresh process so its peak RSS is the loader's own
and not this process's history; forward passes and `unmask.generate` are timed here. The peak is
Linux's VmHWM, reset just before loading: `getrusage(...).ru_maxrss` cannot serve, because an exec'd
child inherits its parent's peak there (the parent has just written the weights, so it is large).
Elsewhere ru_maxrss is the fallback, and the report says the peak was not reset.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from unmask.models.dtypes import dtype_name, resolve_dtype

# LLaDA-8B-Instruct config.json (see the module docstring); the keys are LLaDA's own.
LLADA_8B = {"d_model": 4096, "n_layers": 32, "n_heads": 32, "mlp_hidden_size": 12288, "vocab_size": 126464}
LLADA_8B_SPECIAL = {"mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081}
HEAD_DIM, FFN_RATIO, INIT_STD = 128, 3, 0.02
DEFAULT_FRACTION = 0.125  # d 512, 4 layers, 4 heads, ffn 1536, vocab 15808: 29.8M parameters, ~40 s here
RELEASE_DTYPE = torch.bfloat16
SHARD_BYTES = 1 << 30
SEQ_LENS = (64, 256, 1024)
PROMPT_TOKENS, GEN_LENGTH, BLOCK_SIZE = 32, 64, 32  # two blocks: prefix and dual caches differ
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("low_confidence, 1 token/step (vanilla)", {"strategy": "low_confidence"}),
    ("low_confidence, 16 steps (4 tokens/step)", {"strategy": "low_confidence", "steps": 16}),
    ("threshold 0.9", {"strategy": "threshold", "threshold": 0.9}),
    ("threshold 0.9 + prefix cache", {"strategy": "threshold", "threshold": 0.9, "cache": "prefix"}),
    ("threshold 0.9 + dual cache", {"strategy": "threshold", "threshold": 0.9, "cache": "dual"}),
    ("threshold 0.9 + delayed cache", {"strategy": "threshold", "threshold": 0.9, "cache": "delayed"}),
    ("factor 1.0 + dual cache", {"strategy": "factor", "factor": 1.0, "cache": "dual"}),
    ("threshold 0.9 + dual cache + early commit", {"strategy": "threshold", "threshold": 0.9, "cache": "dual",
                                                   "early_commit": True}),
]
NOTES = [
    "Random weights: every measured time is arithmetic at these shapes, not answer quality.",
    "Each generation setting is timed once (batch 1) after one warm-up call; forward passes take the median of "
    "several. Other work on the machine (see the load average) shifts single timings by tens of percent.",
    "Nothing is extrapolated: the full LLaDA-8B figures in 'full_shapes' are its configuration, not a measurement.",
]


def scaled_shapes(fraction: float) -> dict[str, int]:
    """LLaDA-8B's sizes times `fraction` (d_model to a multiple of head_dim 128, vocab to a multiple of 64)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be above 0 and at most 1, not {fraction}")
    d = max(1, round(LLADA_8B["d_model"] * fraction / HEAD_DIM)) * HEAD_DIM
    return {"d_model": d, "n_layers": max(1, round(LLADA_8B["n_layers"] * fraction)), "n_heads": d // HEAD_DIM,
            "mlp_hidden_size": FFN_RATIO * d, "vocab_size": max(1, round(LLADA_8B["vocab_size"] * fraction / 64)) * 64}


def param_count(s: dict[str, int]) -> int:
    d, f, v = s["d_model"], s["mlp_hidden_size"], s["vocab_size"]
    per_layer = 4 * d * d + 3 * d * f + 2 * d  # q k v o, gate up down, two norms
    return 2 * v * d + s["n_layers"] * per_layer + d  # embedding, untied output, final norm


def llada_config(s: dict[str, int], max_seq_len: int) -> dict[str, Any]:
    """A config.json in LLaDA's own format (the keys its modeling code and our loader read)."""
    special = {k: min(v, s["vocab_size"] - 1 - i) for i, (k, v) in enumerate(LLADA_8B_SPECIAL.items())}
    special["pad_token_id"] = special["eos_token_id"]  # LLaDA pads with its EOS
    return {"architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama", "activation_type": "silu",
            "d_model": s["d_model"], "n_layers": s["n_layers"], "n_heads": s["n_heads"], "n_kv_heads": s["n_heads"],
            "mlp_hidden_size": s["mlp_hidden_size"], "mlp_ratio": 4, "vocab_size": s["vocab_size"],
            "embedding_size": s["vocab_size"], "max_sequence_length": max_seq_len, "rope": True,
            "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "layer_norm_type": "rms", "include_bias": False,
            "include_qkv_bias": False, "weight_tying": False, "init_std": INIT_STD,
            "torch_dtype": dtype_name(RELEASE_DTYPE), **special}


def llada_tensors(s: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a LLaDA checkpoint (PyTorch Linear weights are (out, in))."""
    d, f = s["d_model"], s["mlp_hidden_size"]
    out = [("model.transformer.wte.weight", (s["vocab_size"], d))]
    for i in range(s["n_layers"]):
        b = f"model.transformer.blocks.{i}"
        out += [(f"{b}.attn_norm.weight", (d,)), (f"{b}.ff_norm.weight", (d,))]
        out += [(f"{b}.{n}.weight", (d, d)) for n in ("q_proj", "k_proj", "v_proj", "attn_out")]
        out += [(f"{b}.ff_proj.weight", (f, d)), (f"{b}.up_proj.weight", (f, d)), (f"{b}.ff_out.weight", (d, f))]
    return out + [("model.transformer.ln_f.weight", (d,)), ("model.transformer.ff_out.weight", (s["vocab_size"], d))]


def write_llada_folder(folder: Path, s: dict[str, int], *, seed: int = 0, max_seq_len: int = 4096) -> int:
    """Random weights as a sharded LLaDA folder; returns the bytes of weights written. One shard in memory at a time."""
    g = torch.Generator().manual_seed(seed)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in llada_tensors(s):
        nbytes = torch.Size(shape).numel() * RELEASE_DTYPE.itemsize
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    for k, entries in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        state = {}
        for name, shape in entries:
            t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * INIT_STD
            state[name] = t.to(RELEASE_DTYPE)
            weight_map[name] = file
            total += t.numel() * RELEASE_DTYPE.itemsize
        save_file(state, folder / file)
        del state
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(llada_config(s, max_seq_len), indent=2))
    return total


def measure_load_here(folder: str, dtype: str | None, device: str) -> dict[str, Any]:
    """Run in a fresh process: peak RSS before and after loading, and after one forward touches every weight."""
    import unmask
    import unmask.models.hf  # noqa: F401  (the loader's code, imported before the baseline)
    from unmask.config import ModelConfig
    from unmask.models.transformer import Transformer

    # Building a model on the meta device the first time pulls in ~75 MiB of torch code (measured);
    # do it once on a toy config so the baseline holds all code and the delta is the weights' own.
    with torch.device("meta"):
        Transformer(ModelConfig(vocab_size=8, dim=8, n_layers=1, n_heads=1))
    reset = reset_peak()  # else the peak so far (imports' transients) hides part of the loader's
    baseline = peak_mb()  # interpreter, torch and unmask code, before any weight
    t0 = time.perf_counter()
    model = unmask.load_model(folder, dtype=dtype, device=device)
    seconds = time.perf_counter() - t0
    after_load = peak_mb()
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long, device=device))
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"seconds": seconds, "peak_was_reset": reset, "rss_mb_before_load": baseline,
           "peak_rss_mb_after_load": after_load, "peak_rss_mb_after_first_forward": peak_mb(),
           "weight_bytes_loaded": loaded, "dtype": dtype_name(next(model.parameters()).dtype)}
    if str(device).startswith("cuda"):
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def peak_mb() -> float:
    """This process's peak RSS in MiB: VmHWM (resettable) where /proc has it, else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (bytes on macOS)


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux: /proc/self/clear_refs); False if impossible.

    Free heap pages go back to the system first (glibc malloc_trim), so that loading cannot quietly
    reuse memory the imports freed, which would make its growth look smaller than the weights.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_load(folder: Path, dtype: torch.dtype | None, device: str, threads: int) -> dict[str, Any]:
    code = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[4])); "
            "from unmask.bench.published_shapes import measure_load_here as m; "
            "print(json.dumps(m(sys.argv[1], None if sys.argv[2] == '-' else sys.argv[2], sys.argv[3])))")
    args = [sys.executable, "-c", code, str(folder), dtype_name(dtype) if dtype else "-", device, str(threads)]
    done = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"loading in a fresh process failed: {done.stderr.strip().splitlines()[-1:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["rss_delta_mb"] = out["peak_rss_mb_after_load"] - out["rss_mb_before_load"]
    out["rss_delta_over_weights"] = out["rss_delta_mb"] * 2**20 / out["weight_bytes_loaded"]
    return out


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def ordinary_ids(model: torch.nn.Module, n: int, seed: int, device: str) -> torch.Tensor:
    """`# (1, n)` random token ids, none of them the model's mask, EOS or pad id."""
    special = {model.mask_token_id, model.eos_token_id, model.pad_token_id}
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g)
    for s in special:
        ids[ids == s] = next(i for i in range(model.config.vocab_size) if i not in special)
    return ids.to(device)


@torch.no_grad()
def time_forward(model: torch.nn.Module, seq_lens: tuple[int, ...], repeats: int, device: str) -> list[dict]:
    rows = []
    for n in seq_lens:
        ids = ordinary_ids(model, n, seed=n, device=device)
        model(ids)  # warm-up: allocations, kernel choice
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            model(ids)
            sync(device)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        rows.append({"seq_len": n, "ms_median": ms, "ms_all": [t * 1000 for t in times],
                     "tokens_per_second": n / (ms / 1000)})
    return rows


def time_generate(model: torch.nn.Module, device: str) -> list[dict]:
    import unmask

    prompt = ordinary_ids(model, PROMPT_TOKENS, seed=1, device=device)
    kw = dict(max_new_tokens=GEN_LENGTH, block_size=BLOCK_SIZE, temperature=0.0, stop_at_eos=False)
    unmask.generate(model, prompt, strategy="low_confidence", steps=2, **kw)  # warm-up
    rows = []
    for label, setting in SETTINGS:
        sync(device)
        out = unmask.generate(model, prompt, **kw, **setting)
        sync(device)
        tokens = out.token_ids.numel()
        rows.append({"setting": label, **setting, "nfe": out.nfe, "seconds": out.seconds, "tokens": tokens,
                     "tokens_per_second": tokens / out.seconds, "tokens_per_forward": tokens / out.nfe,
                     "ms_per_forward": out.seconds * 1000 / out.nfe})
    return rows


def confidence_note(rows: list[dict]) -> list[str]:
    """Say so when the confidence rules could not decode in parallel (random weights are rarely sure)."""
    rules = [r for r in rows if r["strategy"] in ("threshold", "factor")]
    if not rules or any(r["tokens_per_forward"] > 1 for r in rules):
        return []
    return ["These random weights are sure of no token, so threshold and factor committed one token per step "
            "(their fallback): their rows measure each cache's per-step cost, not the parallelism a trained model "
            "reaches. The fixed-step low_confidence row commits 4 tokens per step whatever the weights."]


def run_published_shapes(*, fraction: float = DEFAULT_FRACTION, dtype: str | torch.dtype | None = None,
                         out_dir: Path | None = None, progress: bool = True, device: str = "cpu",
                         seq_lens: tuple[int, ...] = SEQ_LENS, repeats: int = 3) -> dict[str, Any]:
    """Measure loading, forward passes and generation at LLaDA-8B's shapes times `fraction`; write JSON + Markdown.

    dtype: the weights' dtype once loaded (None: the checkpoint's, bfloat16 as LLaDA releases it).
    """
    from unmask.bench.harness import environment
    import unmask

    dtype = resolve_dtype(dtype)
    shapes = scaled_shapes(fraction)
    say = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unmask-published-shapes-") as tmp:
        folder = Path(tmp)
        say(f"writing random LLaDA weights at fraction {fraction}: {shapes}")
        on_disk = write_llada_folder(folder, shapes)
        say("loading in a fresh process (peak RSS)")
        load = measure_load(folder, dtype, device, torch.get_num_threads())
        load["weight_bytes_on_disk"] = on_disk
        model = unmask.load_model(folder, dtype=dtype, device=device)
        say(f"forward passes at {', '.join(map(str, seq_lens))} tokens")
        forward = time_forward(model, tuple(n for n in seq_lens if n <= model.config.max_seq_len), repeats, device)
        say(f"unmask.generate: {len(SETTINGS)} settings")
        generate = time_generate(model, device)
    report = {
        "mode": "published-shapes", "source": "LLaDA-8B-Instruct config.json (GSAI-ML/LLaDA-8B-Instruct)",
        "fraction": fraction,
        "scaling": "d_model, mlp_hidden_size, vocab_size and n_layers each times the fraction (d_model rounded to "
                   "a multiple of head_dim 128, vocab to a multiple of 64); head_dim 128 and ffn = 3 x d_model kept",
        "full_shapes": {**LLADA_8B, "params": param_count(LLADA_8B)},
        "shapes": {**shapes, "params": param_count(shapes)},
        "checkpoint_dtype": dtype_name(RELEASE_DTYPE), "dtype": dtype_name(next(model.parameters()).dtype),
        "device": str(device), "load": load, "forward": forward,
        "generate_setup": {"batch": 1, "prompt_tokens": PROMPT_TOKENS, "gen_length": GEN_LENGTH,
                           "block_size": BLOCK_SIZE, "temperature": 0.0, "stop_at_eos": False},
        "generate": generate, "environment": environment(), "notes": NOTES + confidence_note(generate),
        "seconds_total": time.perf_counter() - t_start,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "published_shapes.json").write_text(json.dumps(report, indent=2))
        (out_dir / "published_shapes.md").write_text(markdown(report))
    return report


def markdown(r: dict[str, Any]) -> str:
    s, full, load, env = r["shapes"], r["full_shapes"], r["load"], r["environment"]
    lines = [f"## Published shapes: LLaDA-8B x {r['fraction']:g}", "",
             f"Source: {r['source']}. Scaled: {r['scaling']}.", "",
             "| | d_model | layers | heads | ffn | vocab | parameters |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, x in (("LLaDA-8B (config, not run)", full), ("measured here", s)):
        lines.append(f"| {name} | {x['d_model']} | {x['n_layers']} | {x['n_heads']} | {x['mlp_hidden_size']} | "
                     f"{x['vocab_size']} | {x['params'] / 1e6:,.1f}M |")
    lines += ["", f"Weights: stored {r['checkpoint_dtype']} ({load['weight_bytes_on_disk'] / 2**20:.1f} MiB), "
              f"loaded as {r['dtype']} ({load['weight_bytes_loaded'] / 2**20:.1f} MiB) on {r['device']} in "
              f"{load['seconds']:.2f} s. A fresh process: RSS {load['rss_mb_before_load']:.0f} MiB before loading "
              f"(code only), peak {load['peak_rss_mb_after_load']:.0f} MiB while loading (+{load['rss_delta_mb']:.0f} "
              f"MiB = {load['rss_delta_over_weights']:.2f} x the loaded weights"
              f"{'' if load['peak_was_reset'] else '; the peak could not be reset: it may include imports'}), "
              f"peak {load['peak_rss_mb_after_first_forward']:.0f} MiB after a first forward.", "",
              "| forward, batch 1 | ms (median) | tokens/s |", "|---|---:|---:|"]
    lines += [f"| {f['seq_len']} tokens | {f['ms_median']:.1f} | {f['tokens_per_second']:,.0f} |" for f in r["forward"]]
    g = r["generate_setup"]
    lines += ["", f"`unmask.generate`, batch {g['batch']}, prompt {g['prompt_tokens']} tokens, {g['gen_length']} new "
              f"tokens, block {g['block_size']}, greedy:", "",
              "| setting | NFE | tokens/forward | ms/forward | seconds | tokens/s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {x['setting']} | {x['nfe']} | {x['tokens_per_forward']:.2f} | {x['ms_per_forward']:.1f} | "
              f"{x['seconds']:.3f} | {x['tokens_per_second']:.1f} |" for x in r["generate"]]
    lines += ["", *[f"- {n}" for n in r["notes"]], "",
              f"Environment: torch {env['torch']}, {env['threads']} thread(s), {r['device']} "
              f"({env.get('processor') or 'unknown CPU'}, {env.get('cpu_count')} cores), "
              f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS')}, OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY')}, "
              f"load average at start {env.get('load_average_at_start')}; whole run {r['seconds_total']:.0f} s.", ""]
    return "\n".join(lines)
