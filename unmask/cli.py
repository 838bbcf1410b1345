"""The `unmask` command line (DESIGN.md §3). User mistakes print one sentence to stderr and exit 2."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spin-waiting makes small-batch CPU inference ~5x slower

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence


class UserError(Exception):
    """A mistake in the request: reported as one sentence, no traceback."""


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundled model name or a model folder")
    p.add_argument("--dtype", help="weights as float32 | bfloat16 | float16 (default: a published folder's own "
                                   "dtype, float32 for ours)")
    p.add_argument("--strategy", help="low_confidence | random | threshold | factor | verifier | d2f | isd | ar "
                                      "(default: the model's default)")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate (eval: default is the task's window)")
    p.add_argument("--block-size", type=int, help="semi-autoregressive block length (default 32)")
    p.add_argument("--steps", type=int, help="denoising steps over all blocks (default: one token per step)")
    p.add_argument("--threshold", type=float, help="threshold rule: commit every position at least this sure (0.9)")
    p.add_argument("--factor", type=float, help="factor rule: Fast-dLLM's f (1.0)")
    p.add_argument("--add", type=float, help="strategy d2f: open a new block once the last one is this decoded "
                                             "(tau_add, 0.1); --threshold is its tau_conf (0.9)")
    p.add_argument("--activate", type=float, help="strategy d2f: fully activate a block once its predecessor is "
                                                  "this decoded (tau_act, 0.95)")
    p.add_argument("--confidence", choices=("prob", "margin", "entropy"), help="how threshold/factor/low_confidence score")
    p.add_argument("--cache", choices=("none", "prefix", "dual", "delayed", "exact"),
                   help="KV cache: approximate prefix|dual|delayed (diffusion), exact (block diffusion)")
    p.add_argument("--refresh-every", type=int, help="recompute everything every K steps (with --cache)")
    p.add_argument("--early-commit", nargs="?", const="7.5,5,2.5", metavar="GAPS",
                   help="Prophet: commit all remaining masks once the top1-top2 logit gap clears GAPS (three, "
                        "one per third of the answer, or one for all; default 7.5,5,2.5)")
    p.add_argument("--early-commit-pool", choices=("mean", "min"),
                   help="with --early-commit: pool the masked positions' gaps by their mean (Prophet, default) or "
                        "require every one to clear the gap (min)")
    p.add_argument("--verifier", help="strategy verifier: the AR model that vets each step (default sort-ar-small)")
    p.add_argument("--accept", type=float, help="strategy verifier: reject commits the verifier gives less than this")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, help="ar only: sample from the k likeliest tokens")
    p.add_argument("--top-p", type=float, help="ar only: nucleus sampling mass")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="CPU threads (default: 1 for models under 10M parameters, "
                                               "where splitting ops costs more than it saves; else all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unmask", description="Fast diffusion language models: generate, evaluate, train, benchmark.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list bundled models")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("generate", help="generate text from a prompt")
    add_sampling_flags(p)
    p.add_argument("--prompt", required=True)
    p = sub.add_parser("eval", help="accuracy (sort) or held-out loss (text) of a model")
    add_sampling_flags(p)
    p.add_argument("--task", help="task name (default: the model's own)")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples of the split")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="sort: the held-out examples (test) or 1000 fresh training-distribution ones for choosing "
                        "settings (validation)")
    p.add_argument("--batch-size", type=int, default=32)
    p = sub.add_parser("train", help="train a model from a named recipe")
    p.add_argument("--recipe", required=True)
    p.add_argument("--out", help="output folder (default: runs/RECIPE)")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its last checkpoint")
    p.add_argument("--max-steps", type=int, help="override the recipe's number of optimizer steps")
    p.add_argument("--init", help="start from this model's weights (a bundled name or a folder), e.g. your own "
                                  "first stage for a second-stage recipe such as sort-d2f")
    p = sub.add_parser("bench", help="AR against diffusion: latency, speed and accuracy in one run")
    p.add_argument("--quick", action="store_true", help="a small run: 100 examples, 3 timings per bucket")
    p.add_argument("--out", default="bench-results", help="folder for bench.json, bench.md, bench.png")
    p.add_argument("--serve", action="store_true",
                   help="load test instead: concurrent streaming clients against `unmask serve` (serve.json/md/png)")
    p.add_argument("--seconds", type=float, help="--serve: seconds per concurrency level (default 20; --quick 5)")
    p.add_argument("--clients", default="1,4,16,32", help="--serve: concurrency levels, comma-separated")
    p.add_argument("--published-shapes", action="store_true",
                   help="load and decode random weights at LLaDA-8B's shapes times --fraction "
                        "(published_shapes.json/md)")
    p.add_argument("--fraction", type=float, help="--published-shapes: scale of LLaDA-8B's sizes (default 0.125)")
    p.add_argument("--dtype", help="--published-shapes: float32 | bfloat16 | float16 (default: the checkpoint's, "
                                   "bfloat16)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching")
    p.add_argument("--model", required=True, help="bundled model name or a model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-running", type=int, default=32, help="requests decoded together at most")
    p.add_argument("--max-tokens", type=int, default=16384, help="token slots (prompt + max_tokens) in flight at most")
    p.add_argument("--threads", type=int, help="CPU threads (default: 1 for models under 10M parameters, else all "
                                               "cores)")
    p.add_argument("--keep-alive", type=float, default=75.0,
                   help="seconds an idle HTTP connection stays open (default 75: longer than the 60 s idle timeout of "
                        "common load balancers, so they, not we, close it)")
    return ap


def load(name: str, dtype: str | None = None, threads: int | None = None):
    """A bundled model or folder, with torch's CPU threads set for it (see unmask/threads.py)."""
    from unmask.models.checkpoints import ModelNotFound, load_model
    from unmask.threads import check_threads, choose_threads

    if threads is not None:
        check_threads(threads)  # before the (possibly long) load
    try:
        model = load_model(name, dtype=dtype)
    except ModelNotFound as err:
        raise UserError(str(err)) from None
    choose_threads(model, threads)
    return model


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    strategy = args.strategy
    if strategy is None and (args.add is not None or args.activate is not None):
        strategy = "d2f"  # only the D2F pipeline takes them
    elif strategy is None and (args.threshold is not None or args.factor is not None):
        strategy = "threshold" if args.threshold is not None else "factor"  # the flag names its rule
    kw = {"strategy": strategy, "block_size": args.block_size, "steps": args.steps,
          "temperature": args.temperature, "seed": args.seed, "top_k": args.top_k, "top_p": args.top_p,
          "threshold": args.threshold, "factor": args.factor, "confidence": args.confidence,
          "cache": None if args.cache == "none" else args.cache, "refresh_every": args.refresh_every,
          "verifier": args.verifier, "accept": args.accept, "add": args.add, "activate": args.activate}
    if args.early_commit is not None:
        try:
            kw["early_commit"] = tuple(float(g) for g in args.early_commit.split(","))
        except ValueError:
            raise UserError(f"--early-commit takes one or three numbers like 7.5,5,2.5, "
                            f"not {args.early_commit!r}") from None
    if args.early_commit_pool is not None:
        if args.early_commit is None:
            raise UserError("--early-commit-pool needs --early-commit")
        kw["early_commit_pool"] = args.early_commit_pool
    for key in ("block_size", "steps", "top_k", "refresh_every"):
        if kw[key] is not None and kw[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, not {kw[key]}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be 0 or more, not {args.temperature}")
    return {k: v for k, v in kw.items() if v is not None}


def cmd_models(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from unmask.models.checkpoints import bundled_models

    models = bundled_models()
    if args.json:
        print(json.dumps([asdict(m) for m in models]))
        return
    for m in models:
        print(f"{m.name:20s} {m.kind:16s} {m.task:12s} {m.params:>10,d} params  {m.path}")


def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from unmask.evaluation import prompt_for
    from unmask.generation import generate

    if not args.prompt:
        raise UserError("the prompt is empty: give --prompt some text")
    model = load(args.model, args.dtype, args.threads)
    tok = model.tokenizer
    if tok is None:
        raise UserError(f"{args.model} has no tokenizer.json, so text prompts cannot be encoded")
    try:
        ids, default_new = prompt_for(model, args.prompt)
    except ValueError as err:
        raise UserError(str(err)) from None
    max_new = args.max_new_tokens or default_new
    out = generate(model, torch.tensor([ids]), max_new_tokens=max_new, **sampling_kwargs(args))
    text = tok.decode(out.sequences[0])
    n = out.n_tokens
    record = {"text": text, "token_ids": out.sequences[0], "nfe": out.nfe, "seconds": out.seconds,
              "tokens_per_second": n / out.seconds if out.seconds else 0.0}
    if args.json:
        print(json.dumps(record))
    else:
        print(args.prompt + ("\n" if model.task == "sort" else "") + text)
        print(f"[{n} tokens, {out.nfe} forward passes, {out.seconds:.3f} s, {record['tokens_per_second']:.1f} tokens/s]",
              file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> None:
    from unmask.evaluation import evaluate

    model = load(args.model, args.dtype, args.threads)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}")
    kw = sampling_kwargs(args)
    result = evaluate(model, args.task, limit=args.limit, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, progress=not args.json, split=args.split, **kw)
    result.pop("outputs", None)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20s}: {v:.4f}" if isinstance(v, float) else f"{k:>20s}: {v}")


def cmd_train(args: argparse.Namespace) -> None:
    import dataclasses

    from unmask.train.loop import train
    from unmask.train.recipes import get_recipe

    cfg = get_recipe(args.recipe)
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise UserError(f"--max-steps must be at least 1, not {args.max_steps}")
        cfg = dataclasses.replace(cfg, steps=args.max_steps, warmup_steps=min(cfg.warmup_steps, args.max_steps))
    if args.init is not None:
        cfg = dataclasses.replace(cfg, init=args.init)
    out = Path(args.out or Path("runs") / cfg.name)
    result = train(cfg, out, resume=args.resume)
    print(f"trained {cfg.name} to step {result.steps} in {result.seconds / 60:.1f} min; model folder: {out}"
          + (f"; held-out loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""), file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> None:
    from unmask.bench.harness import run_bench

    if args.published_shapes:
        from unmask.bench.published_shapes import DEFAULT_FRACTION, markdown, run_published_shapes

        fraction = DEFAULT_FRACTION if args.fraction is None else args.fraction
        report = run_published_shapes(fraction=fraction, dtype=args.dtype, out_dir=Path(args.out),
                                      progress=not args.json)
        print(json.dumps(report) if args.json else markdown(report))
        return
    if args.fraction is not None or args.dtype is not None:
        raise UserError("--fraction and --dtype go with --published-shapes")
    if args.serve:
        from unmask.bench.serving import run_serve_bench
        from unmask.bench.serving_report import serve_markdown

        if args.seconds is not None and args.seconds <= 0:
            raise UserError(f"--seconds must be above 0, not {args.seconds}")
        try:
            levels = tuple(int(c) for c in args.clients.split(","))
        except ValueError:
            raise UserError(f"--clients takes numbers like 1,4,16,32, not {args.clients!r}") from None
        if not levels or min(levels) < 1:
            raise UserError("--clients needs concurrency levels of at least 1")
        report = run_serve_bench(quick=args.quick, out_dir=Path(args.out), progress=not args.json,
                                 seconds=args.seconds, concurrency=levels)
        print(json.dumps(report) if args.json else serve_markdown(report))
        return
    report = run_bench(quick=args.quick, out_dir=Path(args.out), progress=not args.json)
    if args.json:
        print(json.dumps(report))


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from unmask.server.app import create_app

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}")
    if args.max_running < 1 or args.max_tokens < 1:
        raise UserError("--max-running and --max-tokens must be at least 1")
    if args.keep_alive <= 0:
        raise UserError(f"--keep-alive must be above 0 seconds, not {args.keep_alive}")
    model = load(args.model, threads=args.threads)
    if model.tokenizer is None:
        raise UserError(f"{args.model} has no tokenizer.json, so it cannot serve text")
    name = Path(args.model).name if Path(args.model).exists() else args.model
    app = create_app(model, name, max_running=args.max_running, max_tokens=args.max_tokens)
    # SIGTERM/SIGINT: uvicorn stops accepting, lets in-flight requests finish for up to 10 s, then the
    # app's shutdown cancels whatever is left and stops the engine thread.
    # Keep-alive: uvicorn's 5 s default closes a connection a client may be reusing at that very moment,
    # and the client sees "Server disconnected"; a client pausing a few seconds between requests is common.
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=10, timeout_keep_alive=args.keep_alive,
                log_level="info")


COMMANDS = {"models": cmd_models, "generate": cmd_generate, "eval": cmd_eval, "train": cmd_train, "bench": cmd_bench,
            "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"unmask {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (e.g. `| head`) closed early: not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print(f"unmask {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
