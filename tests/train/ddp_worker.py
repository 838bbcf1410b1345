"""Run under torchrun by test_ddp.py: 4 steps of tiny-sort-ar (or of an RL recipe), data-parallel with gloo on CPU.

Each rank writes OUT/rank{R}.json: its losses, the world size train() saw, and a checksum of
its final weights (DDP must keep every rank's weights identical).
"""
import dataclasses
import json
import os
import sys

import torch
import torch.distributed as dist

from unmask.train import loop
from unmask.train.recipes import get_recipe

torch.set_num_threads(1)
built = []
_build = loop.build_model
loop.build_model = lambda cfg, tok: built.append(_build(cfg, tok)) or built[-1]  # keep the live model

out = sys.argv[1]
cfg = dataclasses.replace(get_recipe("tiny-sort-ar"), steps=4, eval_every=4, save_every=4)
if len(sys.argv) == 3:  # OUT RECIPE: 4 steps of another recipe (the continuous model's)
    cfg = dataclasses.replace(get_recipe(sys.argv[2]), steps=4, eval_every=4, save_every=4)
elif len(sys.argv) > 2:  # RL: OUT INIT OBJECTIVE (tiny-sort-mdm-rl from the model folder INIT)
    cfg = dataclasses.replace(get_recipe("tiny-sort-mdm-rl"), init=sys.argv[2], objective=sys.argv[3], steps=4,
                              eval_every=4, save_every=4)
result = loop.train(cfg, out, progress=False)
model = built[0]
checksum = [float(p.detach().double().sum()) for p in model.parameters()]
rank = int(os.environ["RANK"])
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"losses": result.losses, "steps": result.steps, "world": dist.get_world_size(),
               "checksum": checksum}, f)
dist.barrier()
dist.destroy_process_group()
