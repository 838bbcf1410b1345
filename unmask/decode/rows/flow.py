"""Sampling a continuous (flow) model: the answer's embeddings denoised from Gaussian noise in `steps` passes.

Pass k runs the whole canvas (the prompt clean, the answer at z_k with noise level g_k) and reads the
x-prediction x_hat = softmax(logits) E. Between passes the answer moves to the next, lower level:
- `ode` (DDIM, deterministic): eps_hat = (z - alpha_t x_hat) / sigma_t, z_s = alpha_s x_hat + sigma_s eps_hat,
  a step of the probability-flow ODE's exact solution for a fixed x_hat;
- `sde` (ancestral): z_s drawn from q(z_s | z_t, x = x_hat), the Gaussian posterior of the forward process.
The levels are t = 1, 1 - 1/K, ..., 1/K through the model's learnt schedule, so passes fall where the
loss changes. Each pass is self-conditioned on the previous pass's x_hat. After the last pass the tokens
are read from its logits: the argmax, or sampled at `temperature` (top-k / top-p); all are committed at
once, and an EOS among them ends the answer there.

Every pass reruns every column (the answer's inputs all change), so there is no cache to keep.
"""
from __future__ import annotations

import math

import torch

from unmask.decode.rows.base import MAIN, Row, Work
from unmask.decode.sampling import sample_next
from unmask.decode.spec import Decoding
from unmask.models.flow import FlowInputs, expected_embedding
from unmask.models.noise_schedule import alpha_sigma


class FlowRow(Row):
    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor, d: Decoding,
                 generator: torch.Generator | None) -> None:
        super().__init__(d.max_new_tokens, model.eos_token_id, d.stop_at_eos)
        dev = prompt.device
        self.P, N = prompt.numel(), d.max_new_tokens
        self.ids = torch.cat([prompt, torch.full((N,), model.mask_token_id, dtype=torch.long, device=dev)])
        with torch.no_grad():
            self.table = model.embeddings().detach()  # (V, dim)
            t = 1 - torch.arange(d.steps + 1, dtype=torch.float32, device=dev) / d.steps  # 1 .. 0
            self.levels = model.schedule(t).detach().to(self.table.dtype)  # (K + 1,) g per pass, then the end
        self.K, self.k = d.steps, 0
        self.sampler, self.generator = d.sampler, generator
        self.temperature, self.top_k, self.top_p = d.temperature, d.top_k, d.top_p
        self.z = torch.randn(N, self.table.shape[1], generator=generator, device=dev).to(self.table)  # (N, dim)
        self.estimate: torch.Tensor | None = None  # (N, dim) the last pass's x_hat
        self.footprint = {MAIN: self.P + N}
        self.busy = False

    def work(self) -> Work | None:
        if self.done or self.busy:
            return None
        T, dim = self.ids.numel(), self.table.shape[1]
        z = torch.zeros(T, dim, dtype=self.table.dtype, device=self.ids.device)
        z[self.P:] = self.z
        g = torch.full((T,), -math.inf, dtype=self.table.dtype, device=self.ids.device)
        g[self.P:] = self.levels[self.k]
        sc = None
        if self.estimate is not None:
            sc = torch.zeros_like(z)
            sc[self.P:] = self.estimate
        return Work(self.ids, 0, T, flow=FlowInputs(z, g, sc))

    def take(self, logits: torch.Tensor) -> None:
        self.passes += 1
        self.busy = True
        answer = logits[self.P:]  # (N, V)
        if self.k + 1 == self.K:
            tokens = sample_next(answer, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                 generator=self.generator)  # (N,)
            self.note(list(range(tokens.numel())), tokens, answer)
            self.extend(tokens.tolist())
            if not self.done:
                self.finish("length")
            return
        x_hat = expected_embedding(answer, self.table)  # (N, dim)
        self.z = self.move(self.z, x_hat, self.levels[self.k], self.levels[self.k + 1])
        self.estimate = x_hat
        self.k += 1

    def move(self, z: torch.Tensor, x_hat: torch.Tensor, g_t: torch.Tensor, g_s: torch.Tensor) -> torch.Tensor:
        """z at level g_t -> z at the lower level g_s, given the x-prediction."""
        a_t, s_t = alpha_sigma(g_t)
        a_s, s_s = alpha_sigma(g_s)
        if self.sampler == "ode":
            eps_hat = (z - a_t * x_hat) / s_t
            return a_s * x_hat + s_s * eps_hat
        a_ts = a_t / a_s  # q(z_t | z_s) = N(a_ts z_s, var_ts)
        var_ts = (s_t ** 2 - a_ts ** 2 * s_s ** 2).clamp_min(0)
        mean = (a_ts * s_s ** 2 / s_t ** 2) * z + (a_s * var_ts / s_t ** 2) * x_hat
        std = (var_ts * s_s ** 2 / s_t ** 2).sqrt()
        noise = torch.randn(z.shape, generator=self.generator, device=z.device).to(z)
        return mean + std * noise

    def next_step(self) -> None:
        self.busy = False
