"""`unmask eval`: accuracy (sort) or held-out loss (text) of a model, through `unmask.generate`."""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm import tqdm

from unmask.data import get_task
from unmask.data.arith import ArithTask
from unmask.data.sort import SortTask
from unmask.decode.spec import Namer, python_name
from unmask.flow_likelihood import ode_bound
from unmask.generation import decode_requests

# Fresh examples from the training distribution (never a held-out prompt) for choosing settings, so the
# held-out split only ever reports: `unmask eval --split validation`.
VALIDATION_SEED, VALIDATION_SIZE = "validation-operating-point", 1000
SPLITS = ("test", "validation")


def task_of(model: torch.nn.Module, name: str | None = None):
    """The task a model was trained on, with the options (e.g. list lengths) of its recipe."""
    meta = getattr(model, "meta", {}) or {}
    name = name or meta.get("task")
    if not name:
        raise ValueError("this model names no task; pass --task")
    if name != meta.get("task"):
        return get_task(name)  # another task than the model's own: its default options
    options = meta.get("task_options")
    if options is None and meta.get("recipe"):  # folders saved before task_options was recorded
        from unmask.train.recipes import RECIPES

        recipe = RECIPES.get(meta["recipe"])
        options = recipe.task_options if recipe else {}
    return get_task(name, **(options or {}))


def sort_task_of(model: torch.nn.Module) -> SortTask | ArithTask | None:
    """The prompt -> answer task (sort, arith) the model was trained on, or None (a text model, or no task)."""
    task = task_of(model) if getattr(model, "task", None) else None
    return task if isinstance(task, (SortTask, ArithTask)) else None


def prompt_for(model: torch.nn.Module, text: str) -> tuple[list[int], int]:
    """Token ids of a user prompt as the model was trained to read it, and its default generation length."""
    task = sort_task_of(model)
    if task is not None:
        return task.prompt_ids(model.tokenizer, text), task.max_window  # the text, then [SEP]
    return model.tokenizer.encode(text), default_new_tokens(model)


def prompt_warning(model: torch.nn.Module, text: str) -> str | None:
    """A sentence when a text prompt lies outside the model's training task (see SortTask.unfamiliar)."""
    task = sort_task_of(model)
    return task.unfamiliar(text) if task is not None else None


def default_new_tokens(model: torch.nn.Module) -> int:
    """How many tokens to generate when a request names no length: the task's answer window, else 64."""
    task = sort_task_of(model)
    return task.max_window if task is not None else 64


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one `# (B, P)` batch, padded on the left, and its validity mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = True
    return ids, mask


def evaluate_sort(model: torch.nn.Module, task: SortTask, *, limit: int | None = None, batch_size: int = 32,
                  progress: bool = False, examples: list | None = None, split: str = "test",
                  namer: Namer = python_name, **options: Any) -> dict[str, Any]:
    """Exact-match accuracy on the held-out split, the validation split, or given `examples` (e.g. training
    ones for calibration), decoded with continuous batching: `batch_size` requests in flight, and a finished
    one's slot is refilled at once. Speed figures count tokens up to and including EOS."""
    if examples is not None:
        split = "given"
    else:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
        examples = task.test_examples if split == "test" else task.train_examples(VALIDATION_SEED, VALIDATION_SIZE)
    examples = examples[:limit] if limit else examples
    if options.get("max_new_tokens") is None:
        options["max_new_tokens"] = task.max_window
    tok = model.tokenizer
    prompts = [task.prompt_ids(tok, ex.prompt) for ex in examples]
    done = decode_requests(model, prompts, options, namer, max_running=batch_size,
                           progress="eval" if progress else None)
    reqs, rows, seconds = done.requests, done.rows, done.seconds
    outputs = [tok.decode(r.output_ids) for r in reqs]
    correct = sum(task.score(text, ex) for text, ex in zip(outputs, examples))
    tokens = sum(len(r.output_ids) + row.ended_with_eos for r, row in zip(reqs, rows))
    row_forwards = sum(row.passes for row in rows)
    n = len(examples)
    return {"task": task.name, "model": getattr(model, "name", "?"), "strategy": reqs[0].decoding.strategy,
            "split": split,
            "n": n, "accuracy": correct / n, "nfe_mean": row_forwards / n, "solo_nfe_mean": row_forwards / n,
            "forward_passes": done.passes, "tokens_per_forward": tokens / row_forwards,
            "tokens_per_second": tokens / seconds, "seconds": seconds, "batch_size": batch_size,
            "max_new_tokens": options["max_new_tokens"], "outputs": outputs}


LOSS_KINDS = {"ar": "nll", "diffusion": "elbo", "block-diffusion": "elbo", "continuous": "ode-bound"}
ODE_STEPS = 64  # RK4 steps of the flow bound (README "Continuous diffusion": steps compared)
DRAW_STRIDE = 1 << 20  # more windows than any split holds: draw k of window w is seed k * DRAW_STRIDE + w
BOUND_TERMS = ("reconstruction", "prior", "volume", "noise")


def window_seed(window: int, draw: int) -> int:
    """The seed of one window's Monte Carlo draw: a function of the window (its index in the held-out text) and
    the draw alone, so a figure does not depend on --batch-size or on which windows share a batch."""
    return draw * DRAW_STRIDE + window


@torch.no_grad()
def evaluate_text(model: torch.nn.Module, task, *, limit: int | None = None, batch_size: int = 16,
                  seq_len: int | None = None, split: str = "test", exact_divergence: bool = False,
                  ode_steps: int | None = None, draws: int = 1, progress: bool = False,
                  **options: Any) -> dict[str, Any]:
    """Held-out loss in nats per token (a character, for the character tokenizer), bits per token and per
    character: the AR negative log-likelihood, the masked-diffusion ELBO bound, or a continuous model's ODE
    bound (Hutchinson's divergence estimate, or the exact one; `ode_steps` RK4 steps). Every window is scored
    whole, unprompted. The two bounds are Monte Carlo estimates: `draws` independent draws per window
    (seeded by `window_seed`), averaged, with the standard error of that mean from the spread between draws
    (`loss_stderr`, from 2 draws on): the estimator's own noise on these windows, not the spread of texts."""
    given = sorted(k for k, v in options.items() if v is not None and k != "namer")
    if given:
        raise ValueError(f"a text evaluation scores held-out windows and decodes nothing: decoding options "
                         f"({', '.join(given)}) do not apply")
    continuous = model.config.kind == "continuous"
    if not continuous and (exact_divergence or ode_steps is not None):
        raise ValueError("the ODE bound's options (--exact-divergence, --ode-steps) are for a continuous (flow) "
                         f"model; this one is {model.config.kind}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    if draws > 1 and model.config.kind == "ar":
        raise ValueError("an AR model's likelihood is exact, nothing is drawn: --draws is for the Monte Carlo "
                         "bounds (a diffusion model's ELBO, a flow's ODE bound)")
    from unmask.train.objectives import ar_nll_rows, mdm_elbo_rows

    seq_len = seq_len or min(256, model.config.max_seq_len)  # windows of 256, or the model's whole context
    windows = task.eval_windows(seq_len, split)
    if limit and limit > len(windows):
        raise ValueError(f"the {split} split has {len(windows)} windows of {seq_len} characters; "
                         f"--limit {limit} asks for more")
    n_windows = limit or min(64, len(windows))  # exactly the split's first n_windows; the last batch may be smaller
    firsts = range(0, n_windows, batch_size)
    t0 = time.perf_counter()
    per_window = torch.zeros(draws, n_windows, dtype=torch.float64)  # nats per token; every window is seq_len
    terms = {k: torch.zeros(draws, n_windows, dtype=torch.float64) for k in BOUND_TERMS}
    tokens = chars = 0
    bar = tqdm(total=len(firsts) * draws, desc="eval", disable=not progress, leave=False)
    for i, first in enumerate(firsts):
        size = min(batch_size, n_windows - first)
        batch = task.eval_batch(model.tokenizer, size, i, seq_len=seq_len, first=windows.start + first)
        tokens += batch.ids.numel()
        chars += sum(len(model.tokenizer.decode(row)) for row in batch.ids.tolist())
        rows = slice(first, first + size)
        for k in range(draws):
            seeds = [window_seed(windows.start + w, k) for w in range(first, first + size)]
            if continuous:
                b = ode_bound(model, batch.ids, batch.valid, exact=exact_divergence, steps=ode_steps or ODE_STEPS,
                              seed=seeds)
                n = b.tokens.double().cpu()
                per_window[k, rows] = b.bound.double().cpu() / n
                for name in BOUND_TERMS:
                    terms[name][k, rows] = getattr(b, name).double().cpu() / n
            elif model.config.kind == "ar":
                per_window[k, rows] = ar_nll_rows(model, batch).cpu()
            else:
                per_window[k, rows] = mdm_elbo_rows(model, batch, model.mask_token_id, seeds).cpu()
            bar.update()
    bar.close()
    loss = float(per_window.mean())
    out = {"task": task.name, "model": getattr(model, "name", "?"), "split": split, "n": n_windows,
           "loss": loss, "loss_kind": LOSS_KINDS[model.config.kind], "bits_per_token": loss / math.log(2),
           "bits_per_char": loss * tokens / chars / math.log(2),  # the same for a character tokenizer
           "seq_len": seq_len, "seconds": time.perf_counter() - t0}
    if model.config.kind != "ar":
        out["draws"] = draws
        if draws > 1:  # each draw's mean over the windows is an independent estimate of the same figure
            means = per_window.mean(1)
            out["loss_stderr"] = float(means.std() / math.sqrt(draws))
            out["draw_losses"] = means.tolist()
    if continuous:  # the bound's terms, nats per token: bound = reconstruction + prior - volume + noise
        out.update({"ode_steps": ode_steps or ODE_STEPS, "divergence": "exact" if exact_divergence else "hutchinson",
                    **{f"{k}_per_token": float(v.mean()) for k, v in terms.items()}})
    return out


def evaluate(model: torch.nn.Module, task_name: str | None = None, **kwargs: Any) -> dict[str, Any]:
    task = task_of(model, task_name)
    if isinstance(task, (SortTask, ArithTask)):
        if kwargs.pop("exact_divergence", False) or kwargs.pop("ode_steps", None) is not None:
            raise ValueError(f"the ODE bound's options (--exact-divergence, --ode-steps) set a text likelihood "
                             f"bound; the {task.name} task is scored by its answers")
        if kwargs.pop("draws", 1) != 1:
            raise ValueError(f"--draws averages a text likelihood bound's Monte Carlo draws; the {task.name} task "
                             f"is scored by its answers")
        return evaluate_sort(model, task, **kwargs)
    return evaluate_text(model, task, **kwargs)
