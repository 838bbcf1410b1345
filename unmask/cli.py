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


def add_decoding_flags(p: argparse.ArgumentParser) -> None:
    """One flag per decoding option of unmask/decode/spec.py; ranges are checked there, named by flag."""
    from unmask.decode.early_commit import DEFAULT_GAPS
    from unmask.decode.spec import OPTIONS

    for o in OPTIONS:
        if not o.cli:
            continue
        if o.kind == "gaps":
            p.add_argument(o.flag, nargs="?", const=",".join(str(g) for g in DEFAULT_GAPS), metavar="GAPS", help=o.help)
        elif o.kind is bool:  # --x / --no-x; absent leaves the option to the decoder's default (None)
            p.add_argument(o.flag, action=argparse.BooleanOptionalAction, default=None, help=o.help)
        else:
            # Choices are checked by the spec too, so a wrong one gets the same sentence as everywhere else.
            p.add_argument(o.flag, type=o.kind, metavar="|".join(o.choices) if o.choices else None, help=o.help)


def decoding_options(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options the command line set (unset ones left out)."""
    from unmask.decode.spec import OPTIONS

    return {o.name: getattr(args, o.name) for o in OPTIONS if o.cli and getattr(args, o.name) is not None}


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="bundled model name or a model folder")
    p.add_argument("--dtype", help="weights as float32 | bfloat16 | float16 (default: a published folder's own "
                                   "dtype, float32 for ours)")
    add_decoding_flags(p)
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, help="CPU threads (default: 1 for models under 10M parameters, "
                                               "where splitting ops costs more than it saves; else all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unmask", description="Fast diffusion language models: generate, evaluate, train, benchmark.")
    from unmask import __version__

    ap.add_argument("--version", action="version", version=f"unmask {__version__}")
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
                        "settings (validation); text: the first or the second half of the held-out windows")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--exact-divergence", action="store_true",
                   help="continuous models: the ODE bound with the Jacobian's exact trace instead of Hutchinson's "
                        "estimate (one pass per noisy coordinate: tiny models and short spans only)")
    p.add_argument("--ode-steps", type=int, help="continuous models: RK4 steps of the ODE bound (default 64)")
    p.add_argument("--draws", type=int, default=1,
                   help="text, diffusion and continuous models: Monte Carlo draws of the bound per window, averaged; "
                        "from 2 on, loss_stderr is the standard error of that mean")
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
    p.add_argument("--seconds", type=float, help="--serve: seconds per concurrency level (default 10; --quick 3)")
    p.add_argument("--clients", default="1,8,32", help="--serve: concurrency levels, comma-separated")
    p.add_argument("--decoders", help="--serve: only these decoders, comma-separated (default: all of "
                                      "unmask/bench/serving.py DECODERS)")
    p.add_argument("--device", default="cpu", help="where the models run: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--published-shapes", action="store_true",
                   help="load and decode random weights at LLaDA-8B's shapes times --fraction "
                        "(published_shapes.json/md)")
    p.add_argument("--fraction", type=float, help="--published-shapes: scale of LLaDA-8B's sizes (default 0.125)")
    p.add_argument("--dtype", help="--published-shapes: float32 | bfloat16 | float16 (default: the checkpoint's, "
                                   "bfloat16)")
    p.add_argument("--ice", action="store_true",
                   help="in-place reasoning on the arith task: AR, no reasoning, reasoning, ICE with template and "
                        "answer-first exit (ice.json/md)")
    p.add_argument("--flow", action="store_true",
                   help="continuous (flow) diffusion against masked diffusion and AR on Shakespeare: held-out "
                        "likelihood bounds side by side, samples and speed against sampling steps (flow.json/md/png)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching")
    p.add_argument("--model", required=True, help="bundled model name or a model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--verifier", action="append", default=[], metavar="NAME",
                   help="an AR model that requests of strategy 'verifier' may name, loaded once at start "
                        "(repeat for several; default: sort-ar-small, when it reads the model's tokens)")
    p.add_argument("--max-running", type=int, default=32, help="requests decoded together at most")
    p.add_argument("--max-tokens", type=int, default=16384, help="token slots (prompt + max_tokens) in flight at most")
    p.add_argument("--threads", type=int, help="CPU threads (default: 1 for models under 10M parameters, else all "
                                               "cores)")
    p.add_argument("--keep-alive", type=float, default=75.0,
                   help="seconds an idle HTTP connection stays open (default 75: longer than the 60 s idle timeout of "
                        "common load balancers, so they, not we, close it)")
    p.add_argument("--dtype", help="weights' dtype: float32 | bfloat16 | float16 (default: the checkpoint's)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model name clients send and /v1/models lists (default: the --model name)")
    p.add_argument("--chat-template", metavar="FILE",
                   help="a jinja chat template for /v1/chat/completions instead of the model's own")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait for a slot; past --max-running plus this a request gets a 503")
    p.add_argument("--api-key", default=os.environ.get("UNMASK_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route but /health and /metrics "
                        "(default: $UNMASK_API_KEY, else none)")
    p.add_argument("--max-body", type=float, default=8.0, help="largest request body in MB; larger ones get a 413")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive (else 408)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send its request headers (else it is closed)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="on SIGTERM/Ctrl-C, seconds requests in flight may run on before they end with an error")
    p = sub.add_parser("lm-eval-tasks", help="print the folder of unmask's lm-eval tasks (for lm_eval --include_path)")
    return ap


def load(name: str, dtype: str | None = None, threads: int | None = None, device: str = "cpu"):
    """A bundled model or folder on `device`, with torch's CPU threads set for it (see unmask/threads.py)."""
    from unmask.models.checkpoints import ModelNotFound, load_model
    from unmask.threads import check_threads, choose_threads

    if threads is not None:
        check_threads(threads)  # before the (possibly long) load
    try:
        check_device(device)
        model = load_model(name, dtype=dtype, device=device)
    except ModelNotFound as err:
        raise UserError(str(err)) from None
    choose_threads(model, threads)
    return model


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: this machine has no MPS device")


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

    from unmask.decode.spec import flag_name
    from unmask.evaluation import prompt_for, prompt_warning
    from unmask.generation import generate

    if not args.prompt:
        raise UserError("the prompt is empty: give --prompt some text")
    model = load(args.model, args.dtype, args.threads, args.device)
    tok = model.tokenizer
    if tok is None:
        raise UserError(f"{args.model} has no tokenizer.json, so text prompts cannot be encoded")
    try:
        ids, default_new = prompt_for(model, args.prompt)
    except ValueError as err:
        raise UserError(str(err)) from None
    options = decoding_options(args)
    options.setdefault("max_new_tokens", default_new)
    out = generate(model, torch.tensor([ids]), namer=flag_name, **options)
    warning = prompt_warning(model, args.prompt)  # after the run: a refused prompt gets the refusal alone
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    text = tok.decode(out.sequences[0])
    n = out.n_tokens
    record = {"text": text, "token_ids": out.sequences[0], "nfe": out.nfe, "seconds": out.seconds,
              "tokens_per_second": n / out.seconds if out.seconds else 0.0}
    if args.json:
        print(json.dumps(record))
    else:
        print(args.prompt + ("\n" if model.task in ("sort", "arith") else "") + text)  # a task answer: its own line
        print(f"[{n} tokens, {out.nfe} forward passes, {out.seconds:.3f} s, {record['tokens_per_second']:.1f} tokens/s]",
              file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> None:
    from unmask.decode.spec import flag_name
    from unmask.evaluation import evaluate

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.ode_steps is not None and args.ode_steps < 1:
        raise UserError(f"--ode-steps must be at least 1, not {args.ode_steps}")
    if args.draws < 1:
        raise UserError(f"--draws must be at least 1, not {args.draws}")
    model = load(args.model, args.dtype, args.threads, args.device)
    bound = {k: v for k, v in (("exact_divergence", args.exact_divergence), ("ode_steps", args.ode_steps)) if v}
    result = evaluate(model, args.task, limit=args.limit, batch_size=args.batch_size, progress=not args.json,
                      split=args.split, namer=flag_name, draws=args.draws, **bound, **decoding_options(args))
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
        check_device(args.device)
        report = run_published_shapes(fraction=fraction, dtype=args.dtype, out_dir=Path(args.out),
                                      progress=not args.json, device=args.device)
        print(json.dumps(report) if args.json else markdown(report))
        return
    if args.fraction is not None or args.dtype is not None:
        raise UserError("--fraction and --dtype go with --published-shapes")
    if args.flow:
        from unmask.bench.flow import markdown as flow_markdown
        from unmask.bench.flow import run_flow_bench

        if args.serve or args.ice or args.device != "cpu":
            raise UserError("--flow is a benchmark of its own, on the CPU: run it without --serve, --ice or --device")
        report = run_flow_bench(quick=args.quick, out_dir=Path(args.out), progress=not args.json)
        print(json.dumps(report) if args.json else flow_markdown(report))
        return
    if args.ice:
        from unmask.bench.ice import markdown as ice_markdown
        from unmask.bench.ice import run_ice_bench

        if args.serve:
            raise UserError("--ice and --serve are two benchmarks: run them one at a time")
        check_device(args.device)
        report = run_ice_bench(quick=args.quick, out_dir=Path(args.out), progress=not args.json, device=args.device)
        print(json.dumps(report, default=str) if args.json else ice_markdown(report))
        return
    if args.decoders is not None and not args.serve:
        raise UserError("--decoders goes with --serve")
    if args.serve:
        from unmask.bench.serving import run_serve_bench
        from unmask.bench.serving_report import serve_markdown

        if args.seconds is not None and args.seconds <= 0:
            raise UserError(f"--seconds must be above 0, not {args.seconds}")
        try:
            levels = tuple(int(c) for c in args.clients.split(","))
        except ValueError:
            raise UserError(f"--clients takes numbers like 1,8,32, not {args.clients!r}") from None
        if not levels or min(levels) < 1:
            raise UserError("--clients needs concurrency levels of at least 1")
        from unmask.bench.serving import DECODERS

        decoders = tuple(d.strip() for d in args.decoders.split(",")) if args.decoders else None
        unknown = [d for d in decoders or () if d not in DECODERS]
        if unknown:
            raise UserError(f"unknown decoder {unknown[0]!r}; known: {', '.join(DECODERS)}")
        check_device(args.device)
        report = run_serve_bench(quick=args.quick, out_dir=Path(args.out), progress=not args.json,
                                 seconds=args.seconds, concurrency=levels, decoders=decoders, device=args.device)
        print(json.dumps(report) if args.json else serve_markdown(report))
        return
    check_device(args.device)
    report = run_bench(quick=args.quick, out_dir=Path(args.out), progress=not args.json, device=args.device)
    if args.json:
        print(json.dumps(report))


def read_chat_template(path: str, tokenizer: object):
    """`--chat-template FILE`, compiled now so a broken one stops the server before it starts."""
    from unmask.chat_template import ChatTemplate

    try:
        source = Path(path).read_text()
    except OSError as err:
        raise UserError(f"cannot read --chat-template {path}: {err.strerror}") from None
    old = getattr(tokenizer, "chat_template", None)
    return ChatTemplate(source, getattr(old, "special_tokens", {}), origin=f"chat template {path}")


def cmd_serve(args: argparse.Namespace) -> None:
    from unmask.decode.strategies.verifier import check_pair
    from unmask.server.app import create_app
    from unmask.server.http_server import serve_app

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}")
    if args.max_running < 1 or args.max_tokens < 1:
        raise UserError("--max-running and --max-tokens must be at least 1")
    if args.keep_alive <= 0:
        raise UserError(f"--keep-alive must be above 0 seconds, not {args.keep_alive}")
    for flag, value in (("--max-body", args.max_body), ("--body-timeout", args.body_timeout),
                        ("--header-timeout", args.header_timeout)):
        if not value > 0:
            raise UserError(f"{flag} must be above 0, not {value}")
    if args.max_queue < 0 or args.shutdown_grace < 0:
        raise UserError("--max-queue and --shutdown-grace must be 0 or more")
    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key is empty: give a key, or leave the option (and $UNMASK_API_KEY) out")
    model = load(args.model, dtype=args.dtype, threads=args.threads, device=args.device)
    if model.tokenizer is None:
        raise UserError(f"{args.model} has no tokenizer.json, so it cannot serve text")
    if args.chat_template:
        model.tokenizer.chat_template = read_chat_template(args.chat_template, model.tokenizer)
    verifiers = {v: load(v, device=args.device) for v in args.verifier}
    if model.config.kind != "ar" and not verifiers:
        from unmask.decode.spec import PRESETS

        default = PRESETS["verifier"]["verifier"]
        try:  # the verifier strategy's default, when it reads this model's tokens
            verifiers = {default: load(default, device=args.device)}
            check_pair(model, verifiers[default])
        except (UserError, ValueError):
            verifiers = {}
    for verifier in verifiers.values():
        check_pair(model, verifier)
    name = args.served_model_name or (Path(args.model).name if Path(args.model).exists() else args.model)
    if not name.strip():
        raise UserError("--served-model-name is empty")
    app = create_app(model, name, max_running=args.max_running, max_tokens=args.max_tokens, verifiers=verifiers,
                     max_queue=args.max_queue, api_key=args.api_key, max_body=int(args.max_body * 1e6),
                     body_timeout=args.body_timeout)
    # Keep-alive: uvicorn's 5 s default closes a connection a client may be reusing at that very moment,
    # and the client sees "Server disconnected"; a client pausing a few seconds between requests is common.
    serve_app(app, app.state.engine, host=args.host, port=args.port, keep_alive=args.keep_alive,
              header_timeout=args.header_timeout, grace=args.shutdown_grace)


def cmd_lm_eval_tasks(args: argparse.Namespace) -> None:
    """The folder holding unmask_sort/ and any later tasks: `lm_eval --include_path $(unmask lm-eval-tasks)`."""
    from unmask.harness import TASKS_DIR

    print(TASKS_DIR)


COMMANDS = {"models": cmd_models, "generate": cmd_generate, "eval": cmd_eval, "train": cmd_train, "bench": cmd_bench,
            "serve": cmd_serve, "lm-eval-tasks": cmd_lm_eval_tasks}


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
