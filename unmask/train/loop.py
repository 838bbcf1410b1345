"""One readable training loop: AdamW, warm-up + cosine, clipping, eval, atomic saves, exact resume.

Runs data-parallel under `torchrun` (DDP, gloo on CPU); every batch and every masking draw is
a pure function of (seed, step, rank), so a resumed run replays exactly what a straight run does.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from unmask.config import ModelConfig, TrainConfig
from unmask.data import get_task
from unmask.models.checkpoints import atomic_write, count_params, load_model, new_model, save_model
from unmask.models.transformer import Transformer
from unmask.tokenizers import CharTokenizer
from unmask.train.distill import d2f_loss, sdtt_loss
from unmask.train.flow_objective import flow_eval_ce, flow_loss
from unmask.train.objectives import ar_loss, bd_loss, isd_loss, mdm_elbo, mdm_loss
from unmask.rl.setup import RL_OBJECTIVES, RLRun

STATE_FILE = "train_state.pt"
LOG_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # one per step run in this call
    eval_loss: float | None = None
    seconds: float = 0.0


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def build_model(cfg: TrainConfig, tok: CharTokenizer) -> Transformer:
    mc = ModelConfig.from_dict({**cfg.model.to_dict(), "vocab_size": tok.vocab_size, "mask_token_id": tok.mask_token_id,
                                "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
    torch.manual_seed(cfg.seed)
    return new_model(mc)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    trained = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


# answers EOS-filled to a window, as a diffusion model decodes them
DIFFUSION_OBJECTIVES = ("mdm", "bd", "d2f", "sdtt", "flow")
DISTILL_OBJECTIVES = ("d2f", "sdtt")


def curriculum_t_max(step: int, cfg: TrainConfig) -> float:
    """The largest mask rate drawn at `step`: 1 without a curriculum."""
    if cfg.curriculum_steps <= 0:
        return 1.0
    return cfg.curriculum_start + (1 - cfg.curriculum_start) * min(1.0, step / cfg.curriculum_steps)


def round_of(step: int, cfg: TrainConfig) -> int:
    """Which distillation round `step` belongs to (sdtt): `steps` split into `rounds` equal parts."""
    return min(step // -(-cfg.steps // cfg.rounds), cfg.rounds - 1)


def loss_on(model: torch.nn.Module, batch, cfg: TrainConfig, mask_id: int, generator: torch.Generator,
            step: int = 0, teacher: torch.nn.Module | None = None) -> torch.Tensor:
    if cfg.objective == "mdm":
        return mdm_loss(model, batch, mask_id, eps=cfg.mask_eps, generator=generator,
                        t_max=curriculum_t_max(step, cfg))
    if cfg.objective == "flow":
        return flow_loss(model, batch, generator, prefix_share=cfg.flow_prefix_share,
                         uniform_share=cfg.flow_uniform_share)
    if cfg.objective == "isd":
        return isd_loss(model, batch, mask_id, cfg.model.ahead, generator=generator)
    if cfg.objective == "bd":
        return bd_loss(model, batch, mask_id, cfg.model.block_size, generator=generator)
    if cfg.objective == "d2f":
        return d2f_loss(model, teacher, batch, mask_id, cfg.model.block_size, generator=generator,
                        ce_weight=cfg.ce_weight)
    if cfg.objective == "sdtt":
        return sdtt_loss(model, teacher, batch, mask_id, cfg.distill_block,
                         cfg.step_tokens * 2 ** round_of(step, cfg), generator=generator, ce_weight=cfg.ce_weight)
    return ar_loss(model, batch)


def fitting_model(name: str, student: Transformer, role: str) -> Transformer:
    """Load `name` (bundled or a folder); its weights must fit the student's shape (only the attention
    kind may differ). role names it in the error: the teacher, or the init of a second stage."""
    other = load_model(name)
    theirs, ours = other.state_dict(), student.state_dict()
    wrong = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if wrong:
        raise ValueError(f"{role} {name!r} does not fit the model's shape (first mismatch: {wrong[0]}); "
                         "the recipe's model config must copy its dimensions")
    return other


def load_teacher(cfg: TrainConfig, student: Transformer) -> Transformer:
    """The frozen teacher."""
    if not cfg.teacher:
        raise ValueError(f"objective {cfg.objective!r} distils from a teacher: set the recipe's teacher")
    teacher = fitting_model(cfg.teacher, student, "teacher")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def evaluate_loss(model: Transformer, cfg: TrainConfig, tok: CharTokenizer, task,
                  teacher: Transformer | None = None) -> float:
    """Held-out loss: diffusion ELBO bound per token, AR NLL per token (nats), or d2f's KL to the teacher."""
    model.eval()
    losses = []
    for i in range(cfg.eval_batches):
        batch = task.eval_batch(tok, cfg.batch_size, i, diffusion=cfg.objective in DIFFUSION_OBJECTIVES, seq_len=cfg.seq_len)
        if cfg.objective == "d2f":  # the student's distance to its teacher on a fixed draw
            losses.append(float(d2f_loss(model, teacher, batch, tok.mask_token_id, cfg.model.block_size,
                                         generator=torch.Generator().manual_seed(i))))
        elif cfg.objective == "flow":  # x-prediction CE over stratified noise (the bound is `unmask eval`'s)
            losses.append(flow_eval_ce(model, batch, seed=i))
        elif cfg.objective in ("mdm", "sdtt"):
            losses.append(mdm_elbo(model, batch, tok.mask_token_id, seed=i))
        elif cfg.objective == "bd":  # a fixed draw of per-block noise levels: comparable across evals
            losses.append(float(bd_loss(model, batch, tok.mask_token_id, cfg.model.block_size,
                                        generator=torch.Generator().manual_seed(i))))
        else:
            losses.append(float(ar_loss(model, batch)))
    model.train()
    return sum(losses) / len(losses)


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, stop_after: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train `cfg` into `out_dir` (model folder + train_state.pt + metrics.jsonl).

    resume: continue from out_dir/train_state.pt. stop_after: leave after this global step
    (as a killed run would), keeping the schedule of cfg.steps.
    """
    out = Path(out_dir)
    rank, world = _distributed()
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} does not split over {world} processes")
    tok = CharTokenizer()
    task = get_task(cfg.task, **cfg.task_options)
    model = build_model(cfg, tok)
    teacher = load_teacher(cfg, model) if cfg.objective in DISTILL_OBJECTIVES else None
    if cfg.init:
        model.load_state_dict(fitting_model(cfg.init, model, "init").state_dict())  # a second stage
    elif teacher is not None:
        model.load_state_dict(teacher.state_dict())  # the student starts as the teacher
    rl = RLRun.start(cfg, model, tok, task, world) if cfg.objective in RL_OBJECTIVES else None
    opt = make_optimizer(model, cfg)
    start, prior_seconds = 0, 0.0
    state_path = out / STATE_FILE
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"cannot resume: {state_path} does not exist")
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, prior_seconds = state["step"], state.get("train_seconds", 0.0)
        if teacher is not None and "teacher" in state:  # sdtt: a later round's teacher is an earlier student
            teacher.load_state_dict(state["teacher"])
        if rank == 0:
            _truncate_log(out, start)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    model.train()
    end = min(cfg.steps, stop_after if stop_after is not None else cfg.steps)
    result = TrainResult(steps=start)
    t0 = time.time()
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=cfg.name, disable=not progress or rank != 0,
               dynamic_ncols=True)
    tokens_seen, t_last = 0, time.time()
    for step in bar:
        seed = f"{cfg.seed}-{step}-{rank}"
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        if cfg.objective == "sdtt" and step > 0 and round_of(step, cfg) != round_of(step - 1, cfg):
            if rank == 0:  # the finished round's student, kept for the steps-per-block table
                save_model(model, tok, out / f"round-{round_of(step - 1, cfg) + 1}",
                           _meta(cfg, model, step, prior_seconds + time.time() - t0))
            teacher.load_state_dict(model.state_dict())  # self-distillation: the student teaches the next round
        metrics: dict = {}
        if rl is not None:  # one RL iteration: rollouts, rewards, inner updates (unmask/rl/iteration.py)
            it = rl.iteration(ddp, opt, step, rank, world)
            result.losses.append(it.loss)
            metrics = it.metrics
        else:
            batch = task.train_batch(tok, cfg.batch_size // world, seed,
                                     diffusion=cfg.objective in DIFFUSION_OBJECTIVES, seq_len=cfg.seq_len)
            gen = torch.Generator().manual_seed(hash_seed(seed))
            loss = loss_on(ddp, batch, cfg, tok.mask_token_id, gen, step, teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            result.losses.append(float(loss.detach()))
            tokens_seen += batch.n_tokens * world
        result.steps = step + 1
        if rank == 0:
            record = {"step": step + 1, "loss": result.losses[-1], "lr": lr_at(step, cfg), **metrics}
            last = step + 1 == end
            if (step + 1) % cfg.eval_every == 0 or (last and step + 1 == cfg.steps):
                if rl is not None:
                    record.update(rl.evaluate())
                else:
                    record["eval_loss"] = result.eval_loss = evaluate_loss(model, cfg, tok, task, teacher)
            if (step + 1) % 10 == 0 or last:
                now = time.time()
                if rl is not None:
                    bar.set_postfix(loss=f"{result.losses[-1]:.3f}", reward=f"{metrics['reward']:.3f}",
                                    forwards=f"{metrics['forwards']:.2f}")
                else:
                    bar.set_postfix(loss=f"{result.losses[-1]:.3f}",
                                    tok_s=f"{tokens_seen / max(now - t_last, 1e-9):.0f}",
                                    eval=f"{result.eval_loss:.3f}" if result.eval_loss is not None else "-")
                tokens_seen, t_last = 0, now
            _append_log(out, record)
            if (step + 1) % cfg.save_every == 0 or last:
                save_checkpoint(model, opt, tok, cfg, out, step + 1, prior_seconds + time.time() - t0, teacher)
                if rl is not None:
                    rl.plot(out)
    result.seconds = time.time() - t0
    return result


def hash_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _append_log(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(out: Path, step: int) -> None:
    """Drop records a killed run logged after its last checkpoint: the resumed run logs them again."""
    path = out / LOG_FILE
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write(path, lambda p: Path(p).write_text("".join(line + "\n" for line in kept)))


def save_checkpoint(model: Transformer, opt: torch.optim.Optimizer, tok: CharTokenizer, cfg: TrainConfig, out: Path,
                    step: int, train_seconds: float, teacher: Transformer | None = None) -> None:
    """The loadable model folder and the resumable state, each written atomically."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "train_seconds": train_seconds}
    if teacher is not None and cfg.rounds > 1:
        state["teacher"] = teacher.state_dict()
    atomic_write(out / STATE_FILE, lambda p: torch.save(state, p))
    if cfg.lora_rank:  # the folder holds the adapters merged in: a plain checkpoint
        from unmask.rl.lora import merged

        model = merged(model)
    save_model(model, tok, out, _meta(cfg, model, step, train_seconds))


def _meta(cfg: TrainConfig, model: Transformer, step: int, train_seconds: float) -> dict:
    meta = {"task": cfg.task, "recipe": cfg.name, "params": count_params(model), "train_steps": step,
            "train_minutes": round(train_seconds / 60, 2), "task_options": cfg.task_options,
            "description": cfg.description}
    if cfg.teacher:
        meta["teacher"] = cfg.teacher
    if cfg.ce_weight:
        meta["ce_weight"] = cfg.ce_weight
    if cfg.init:
        meta["init"] = cfg.init
    if cfg.objective == "flow":  # what the rows trained on, so a bundled flow can be checked against its recipe
        meta["flow_prefix_share"], meta["flow_uniform_share"] = cfg.flow_prefix_share, cfg.flow_uniform_share
    return meta
