"""The bundled checkpoints: each loads, and each is what its named recipe trains."""
from __future__ import annotations

import pytest

import unmask
from unmask.models.checkpoints import bundled_models
from unmask.train.recipes import get_recipe

BUNDLED = [m.name for m in bundled_models()]


@pytest.mark.parametrize("name", BUNDLED)
def test_a_bundled_model_matches_its_recipe(name):
    model = unmask.load_model(name)
    meta = model.meta
    recipe = get_recipe(meta["recipe"])
    assert meta["recipe"] == name  # `unmask train --recipe NAME` reproduces the bundled NAME
    for field in ("kind", "dim", "n_layers", "n_heads", "block_size", "ahead", "logits_shift", "default_template",
                  "embed_dim"):
        assert getattr(model.config, field) == getattr(recipe.model, field), field
    assert meta["train_steps"] == recipe.steps and meta["task_options"] == recipe.task_options
    assert meta.get("teacher") == recipe.teacher and meta.get("ce_weight", 0.0) == recipe.ce_weight
    assert meta.get("init") == recipe.init
    if recipe.objective == "flow":
        assert (meta["flow_prefix_share"], meta["flow_uniform_share"]) == (recipe.flow_prefix_share,
                                                                          recipe.flow_uniform_share)
    if recipe.init:  # a second stage: its first stage is bundled too, so the chain reproduces
        assert recipe.init in BUNDLED
    if recipe.teacher:  # a distilled student keeps its teacher's shape
        assert unmask.load_model(recipe.teacher).config.dim == model.config.dim


def test_the_few_step_models_are_bundled():
    assert {"sort-mdm", "sort-ar", "sort-bd", "sort-d2f", "sort-mdm-sdtt"} <= set(BUNDLED)
