"""Recipes as data (helper/recipes.py): applied as defaults that explicit flags override, and the script, its plans
and the README's method table generated from them, so the three cannot drift."""
import logging

import pytest

from distiller_zoo.base import distiller_registry
from helper import recipes
from tests.student_utils import parse


def applied(*args, teacher="resnet32x4"):
    opt = parse(*args)
    return recipes.apply_recipe(opt, teacher, opt.explicit)


def test_the_script_its_plans_and_the_readme_table_are_generated_from_the_recipes():
    stale = [rel for rel, text in recipes.generated_files().items()
             if open(f"{recipes.ROOT}/{rel}").read() != text]
    assert stale == [], f"run `python -m helper.recipes --write`: {stale} differ from helper/recipes.py"


def test_every_recipe_names_a_registered_method_and_real_flags():
    parser_dests = set(vars(parse()))
    for method, recipe in recipes.RECIPES.items():
        assert method in distiller_registry, method
        for flags in [recipe.flags, *recipe.pairs.values(), *recipe.variants]:
            assert set(flags) - {"_pair"} <= parser_dests, (method, set(flags) - parser_dests)


def test_recipe_values_fill_unset_flags_and_explicit_flags_win(caplog):
    with caplog.at_level(logging.INFO, logger="kd"):
        opt = applied("--distill", "crcd", "--model_s", "resnet8x4", "--nce_k", "64")
    assert (opt.gamma, opt.alpha, opt.beta, opt.epochs, opt.mimic_schedule, opt.nce_t) == (1, 0.9, 1, 250, "240", 0.05)
    assert opt.nce_k == 64  # given explicitly
    assert "recipe for --distill crcd" in caplog.text and "--epochs 250" in caplog.text and "--nce_k" not in caplog.text
    opt = applied("--distill", "crcd", "--model_s", "resnet8x4", "--epochs", "240", "-a", "0")
    assert (opt.epochs, opt.alpha) == (240, 0.0)


def test_pair_specific_values_apply_on_their_pair_only():
    assert applied("--distill", "dkd", "--model_s", "resnet20", teacher="resnet56").dkd_beta == 2
    assert applied("--distill", "dkd", "--model_s", "resnet8x4").dkd_beta == 8
    mlkd = applied("--distill", "mlkd", "--model_s", "ShuffleV1")
    assert (mlkd.epochs, mlkd.learning_rate) == (960, 0.01)


def test_no_recipe_keeps_the_flag_defaults():
    opt = applied("--distill", "crcd", "--model_s", "resnet8x4", "--no_recipe")
    assert (opt.gamma, opt.alpha, opt.beta, opt.epochs, opt.nce_k) == (1.0, 0.0, 1.0, 240, 16384)


@pytest.mark.parametrize("method", ["kd", "crd", "dkd"])
def test_every_script_line_keeps_its_recipe(method):
    lines = [flags for _, _, flags in recipes.script_lines() if flags["distill"] == method]
    assert lines and all(flags["beta"] == recipes.RECIPES[method].flags["beta"] for flags in lines
                         if "beta" in flags)
