"""Each method's published CIFAR-100 recipe, as data, in one place.

A recipe is every flag of the method's published run (not only -r/-a/-b): applied as defaults when a student is
built (explicit flags win; each applied value is logged; `--no_recipe` turns them off), per teacher->student pair
where the authors publish pair-specific values. `scripts/run_cifar_distill.sh`, its plan files and the README's
method table are generated from it (`python -m helper.recipes --write`), and a test checks they match.
"""
import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from helper.util import SHORT_FLAGS, flag_text

log = logging.getLogger("kd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_PATH = "./save/models/{}_vanilla/ckpt_epoch_240.pth"
MAIN_PAIR = ("resnet32x4", "resnet8x4")


@dataclass
class MethodRecipe:
    """paper: citation shown in the README; consumes: what the method reads; flags: its recipe on every pair;
    pairs: {(teacher, student): flags} overriding `flags` on that pair; variants: further script lines (e.g. CRD+KD,
    CTKD) that are not defaults; source: where the numbers come from."""
    paper: str
    consumes: str
    flags: Dict[str, object]
    source: str
    pairs: Dict[Tuple[str, str], Dict[str, object]] = field(default_factory=dict)
    variants: List[Dict[str, object]] = field(default_factory=list)
    main_pair: Tuple[str, str] = MAIN_PAIR


def _w(r, a, b, **extra):
    return {"gamma": r, "alpha": a, "beta": b, **extra}


REPDISTILLER = "RepDistiller scripts/run_cifar_distill.sh"
CTKD_GLOBAL = {"have_mlp": 1, "mlp_name": "global", "t_start": 1, "t_end": 20, "cosine_decay": 1, "decay_max": 0,
               "decay_min": -1, "decay_loops": 10}
DKD_PAIRS = {("resnet56", "resnet20"): 2, ("resnet110", "resnet32"): 2, ("wrn_40_2", "wrn_16_2"): 6,
             ("wrn_40_2", "wrn_40_1"): 6, ("vgg13", "vgg8"): 6, ("resnet32x4", "ShuffleV1"): 8,
             ("resnet32x4", "ShuffleV2"): 8, ("ResNet50", "MobileNetV2"): 8, ("vgg13", "MobileNetV2"): 6,
             ("wrn_40_2", "ShuffleV1"): 8}

# ReviewKD's per-pair weights (its CIFAR-100/script/reviewKD.sh; mdistiller's -b 5 on resnet32x4 -> resnet8x4).
REVIEWKD_PAIRS = {("wrn_40_2", "wrn_16_2"): 5, ("wrn_40_2", "wrn_40_1"): 5, ("wrn_40_2", "ShuffleV1"): 5,
                  ("resnet32x4", "ShuffleV1"): 5, ("resnet32x4", "ShuffleV2"): 8, ("resnet56", "resnet20"): 0.6,
                  ("resnet110", "resnet32"): 1.0}
DIST_PAIRS = [("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("ResNet50", "MobileNetV2"),
              ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2")]
# MLKD: 240 epochs at lr 0.025 by default; these pairs train longer at lr 0.01 (its configs; decay still 150/180/210).
MLKD_PAIRS = {**{pair: {"epochs": 480, "learning_rate": 0.01}
                 for pair in [("ResNet50", "MobileNetV2"), ("vgg13", "MobileNetV2"), ("wrn_40_2", "ShuffleV1")]},
              **{pair: {"epochs": 960, "learning_rate": 0.01}
                 for pair in [("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2")]},
              **{pair: {} for pair in [("resnet110", "resnet32"), ("resnet56", "resnet20"), ("vgg13", "vgg8"),
                                       ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1")]}}
# Logit standardisation (Sun et al., CVPR 2024): its KD runs (base temperature, KD weight) and DKD runs
# (temperature, weight w, beta: --dkd_alpha w --dkd_beta beta*w) per pair, from its README's log names.
LS_KD = {("resnet32x4", "resnet8x4"): (2, 9), ("wrn_40_2", "wrn_40_1"): (2, 9), ("wrn_40_2", "wrn_16_2"): (2, 9),
         ("resnet56", "resnet20"): (2, 9), ("resnet110", "resnet32"): (2, 9), ("resnet32x4", "ShuffleV2"): (2, 9),
         ("wrn_40_2", "resnet8x4"): (2, 9), ("vgg13", "vgg8"): (3, 9), ("resnet32x4", "wrn_16_2"): (3, 9),
         ("resnet32x4", "wrn_40_2"): (3, 9), ("wrn_40_2", "MobileNetV2"): (3, 9), ("vgg13", "MobileNetV2"): (3, 9),
         ("resnet110", "resnet20"): (4, 12), ("ResNet50", "MobileNetV2"): (3, 1)}
LS_DKD = {("resnet32x4", "resnet8x4"): (2, 9, 8), ("resnet32x4", "ShuffleV2"): (2, 9, 8),
          ("resnet32x4", "wrn_40_2"): (2, 9, 8), ("resnet32x4", "wrn_16_2"): (2, 9, 2),
          ("resnet110", "resnet20"): (2, 15, 2), ("resnet110", "resnet32"): (2, 15, 2), ("vgg13", "vgg8"): (2, 15, 2),
          ("wrn_40_2", "MobileNetV2"): (2, 15, 2), ("ResNet50", "MobileNetV2"): (2, 15, 2),
          ("resnet56", "resnet20"): (3, 18, 2), ("vgg13", "MobileNetV2"): (3, 9, 2),
          ("wrn_40_2", "resnet8x4"): (2, 18, 2), ("wrn_40_2", "wrn_16_2"): (2, 12, 2),
          ("wrn_40_2", "wrn_40_1"): (2, 12, 2)}
DOT_KD = {"dot": True, "dot_delta": 0.075}  # mdistiller configs/cifar100/dot/*.yaml: KD with DOT's two momenta

RECIPES: Dict[str, MethodRecipe] = {
    "kd": MethodRecipe("Hinton et al., 2015", "logits; temperature, logit transform", _w(0.1, 0.9, 0), REPDISTILLER,
                       variants=[CTKD_GLOBAL, {**CTKD_GLOBAL, "mlp_name": "instance"}]
                       + [{"_pair": pair, **DOT_KD} for pair in [MAIN_PAIR, ("resnet32x4", "ShuffleV2"),
                                                                 ("vgg13", "vgg8")]]
                       + [{"_pair": pair, "logit_stand": True, "kd_T": T, "alpha": w}
                          for pair, (T, w) in LS_KD.items()]),
    "hint": MethodRecipe("FitNets, Romero et al., ICLR 2015", "feature `--hint_layer`, trainable ConvReg",
                         _w(1, 0, 100), REPDISTILLER),
    "attention": MethodRecipe("AT, Zagoruyko & Komodakis, ICLR 2017", "stage features", _w(1, 0, 1000), REPDISTILLER),
    "similarity": MethodRecipe("SP, Tung & Mori, ICCV 2019", "last stage", _w(1, 0, 3000), REPDISTILLER),
    "correlation": MethodRecipe("CC, Peng et al., ICCV 2019", "pooled feature, trainable embeddings",
                                _w(1, 0, 0.02), REPDISTILLER),
    "vid": MethodRecipe("VID, Ahn et al., CVPR 2019", "stage features, trainable regressors", _w(1, 0, 1),
                        REPDISTILLER),
    "rkd": MethodRecipe("RKD, Park et al., CVPR 2019", "pooled feature", _w(1, 0, 1), REPDISTILLER),
    "pkt": MethodRecipe("PKT, Passalis & Tefas, ECCV 2018", "pooled feature", _w(1, 0, 30000), REPDISTILLER),
    "abound": MethodRecipe("AB, Heo et al., AAAI 2019", "pre-activation stages; init stage", _w(1, 0, 1),
                           REPDISTILLER),
    "factor": MethodRecipe("FT, Kim et al., NeurIPS 2018", "last stage; init stage (paraphraser)", _w(1, 0, 200),
                           REPDISTILLER),
    "fsp": MethodRecipe("FSP, Yim et al., CVPR 2017", "stem and stages (equal widths); init stage", _w(1, 0, 50),
                        REPDISTILLER),
    "nst": MethodRecipe("NST, Huang & Wang, 2017", "stage features", _w(1, 0, 50), REPDISTILLER),
    "kdsvd": MethodRecipe("KD-SVD, Lee et al., ECCV 2018", "stage features (equal widths)", _w(1, 0, 1),
                          REPDISTILLER),
    "crd": MethodRecipe("CRD, Tian et al., ICLR 2020", "pooled feature, indices, its own negatives, memory bank",
                        _w(1, 0, 0.8), REPDISTILLER, variants=[{"alpha": 1}]),
    "irg": MethodRecipe("IRG, Liu et al., CVPR 2019 (SemCKD's code)", "pooled feature (+ chosen layers)",
                        _w(1, 1, 0.005), "SemCKD scripts"),
    "hkd": MethodRecipe("HKD, Passalis et al., CVPR 2020 (SemCKD's code)", "stage features",
                        _w(1, 1, 1), "SemCKD scripts: two passes through a resnet8x4_double assistant"),
    "crcd": MethodRecipe("CRCD, Zhu et al., CVPR 2021", "pooled feature, indices, its own negatives; gradient "
                         "elements with `--with_grad`",
                         _w(1, 0.9, 1, nce_k=500, nce_t=0.05, epochs=250, mimic_schedule="240"),
                         "CRCD code: train_student.py defaults and its hard-coded '240' schedule",
                         variants=[{"with_grad": True, "grad_kd_type": "cos", "grad_kd_weight": 1}]),
    "semckd": MethodRecipe("SemCKD, Chen et al., AAAI 2021", "stage features, full batches", _w(1, 1, 400),
                           "SemCKD scripts"),
    "dkd": MethodRecipe("DKD, Zhao et al., CVPR 2022", "logits, labels; 20-epoch warm-up; temperature, logit "
                        "transform", _w(1, 0, 1, dkd_alpha=1, dkd_beta=8, dkd_T=4, warmup=20),
                        "mdistiller configs/cifar100/dkd/*.yaml",
                        pairs={pair: {"dkd_beta": beta} for pair, beta in DKD_PAIRS.items()},
                        variants=[{key: CTKD_GLOBAL[key] for key in ("have_mlp", "mlp_name", "decay_max",
                                                                     "decay_min", "decay_loops")}]
                        + [{"_pair": pair, "logit_stand": True, "dkd_T": T, "dkd_alpha": w, "dkd_beta": beta * w}
                           for pair, (T, w, beta) in LS_DKD.items()]),
    "ckd": MethodRecipe("CKD, Zhu et al., 2024", "logits",
                        _w(1, 0, 100, ckd_T=1, epochs=480, lr_schedule="cosine"), "CKD's configs (issue text)"),
    "reviewkd": MethodRecipe("ReviewKD, Chen et al., CVPR 2021", "stage features and pooled feature, trainable ABF "
                             "fusion; 20-epoch warm-up", _w(1, 0, 5, reviewkd_warmup_epochs=20),
                             "mdistiller configs/cifar100/reviewkd.yaml; per-pair -b from ReviewKD's "
                             "CIFAR-100/script/reviewKD.sh",
                             pairs={pair: {"beta": beta} for pair, beta in REVIEWKD_PAIRS.items()}),
    "ofd": MethodRecipe("OFD, Heo et al., ICCV 2019", "pre-ReLU stage features, the teacher's BN margins, trainable "
                        "connectors", _w(1, 0, 0.001, ofd_kernel_size=1), "mdistiller configs/cifar100/ofd.yaml"),
    "dist": MethodRecipe("DIST, Huang et al., NeurIPS 2022", "logits", _w(1, 0, 2, dist_beta=1, dist_gamma=1, dist_tau=4),
                         "DIST_KD image_classification_sota configs/strategies/distill/dist_cifar.yaml",
                         pairs={pair: {} for pair in DIST_PAIRS}),
    "mlkd": MethodRecipe("MLKD, Jin et al., CVPR 2023", "logits of a weak and a strong view (two views per image); "
                         "logit transform", _w(0.1, 0, 0.9, mlkd_temperature=4, learning_rate=0.025),
                         "Multi-Level-Logit-Distillation configs/cifar100/ours/*.yaml",
                         pairs=MLKD_PAIRS,
                         variants=[{"logit_stand": True, "mlkd_temperature": 2, "beta": 9, "epochs": 480}]),
    "ickd": MethodRecipe("ICKD, Liu et al., ICCV 2021", "last stage, trainable embedding", _w(1, 0, 2.5),
                         "ICKD Cifar100/scripts/run_cifar_distill.sh", variants=[{"alpha": 1}]),
    "simkd": MethodRecipe("SimKD, Chen et al., CVPR 2022", "last stage; projector + the teacher's classifier as the "
                          "student's head", _w(0, 0, 1, simkd_factor=2), "SimKD scripts/run_distill.sh"),
    "srrl": MethodRecipe("SRRL, Yang et al., ICLR 2021", "pooled feature through the teacher's classifier",
                         _w(1, 1, 1), "SimKD scripts/run_distill.sh"),
}


def recipe_flags(method, teacher, student):
    """The recipe's flags for `method` on the pair (teacher, student): {} for a method without a recipe."""
    recipe = RECIPES.get(method)
    if recipe is None:
        return {}
    flags = dict(recipe.flags)
    flags.update(recipe.pairs.get((teacher, student), {}))
    return flags


def apply_recipe(opt, teacher, explicit, log_prefix=""):
    """Fill every recipe flag not given explicitly (in place), with a log line; weights the recipe does not give
    fall back to -r 1 -a 0 -b 1. `--no_recipe` keeps the flag defaults (weights still need a value)."""
    flags = {} if getattr(opt, "no_recipe", False) else recipe_flags(opt.distill, teacher, opt.model_s)
    applied = []
    for dest in ("gamma", "alpha", "beta"):
        flags.setdefault(dest, {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}[dest])
    for dest, value in flags.items():
        if dest in explicit or not hasattr(opt, dest):
            continue
        if dest not in ("gamma", "alpha", "beta") and getattr(opt, dest) == value:
            continue
        setattr(opt, dest, float(value) if dest in SHORT_FLAGS else value)
        applied.append(flag_text(dest, value))
    if applied:
        source = RECIPES[opt.distill].source if opt.distill in RECIPES and not opt.no_recipe else "defaults"
        log.info("%srecipe for --distill %s (%s -> %s, %s): %s", log_prefix, opt.distill, teacher, opt.model_s,
                 source, " ".join(applied))
    opt.recipe_applied = applied
    return opt


def line_flags(flags):
    order = ["gamma", "alpha", "beta"]
    keys = [k for k in order if k in flags] + sorted(k for k in flags if k not in order)
    return " ".join(flag_text(k, flags[k]) for k in keys)


# ---- generated files ------------------------------------------------------------------------------------------------
def script_lines():
    """[(teacher, student, flags)] of every line of the CIFAR-100 table, in order."""
    lines = []
    for method, recipe in RECIPES.items():
        teacher, student = recipe.main_pair
        base = {"distill": method, **recipe_flags(method, teacher, student)}
        if method == "hkd":  # its assistant first, named by the trial so HKD finds it whatever the flags
            lines.append((teacher, "resnet8x4_double", {"distill": "pkt", **_w(1, 1, 30000), "run_name": ASSISTANT_RUN}))
            lines.append(("assistant", student, base))
            continue
        lines.append((teacher, student, base))
        for variant in recipe.variants:
            v_teacher, v_student = variant.get("_pair", recipe.main_pair)
            flags = {"distill": method, **recipe_flags(method, v_teacher, v_student)}
            lines.append((v_teacher, v_student, {**flags, **{k: v for k, v in variant.items() if k != "_pair"}}))
    for method, recipe in RECIPES.items():
        for (teacher, student) in recipe.pairs:
            if (teacher, student) != recipe.main_pair:
                lines.append((teacher, student, {"distill": method, **recipe_flags(method, teacher, student)}))
    return lines


ASSISTANT_RUN = "hkd_assistant_resnet8x4_double_T=resnet32x4_$TRIAL"  # the shell expands $TRIAL
ASSISTANT = f"./save/student_model/{ASSISTANT_RUN}/resnet8x4_double_best.pth"


def single_line(teacher, student, flags):
    path = ASSISTANT if teacher == "assistant" else TEACHER_PATH.format(teacher)
    rest = {k: v for k, v in flags.items() if k != "distill"}
    return (f'python train_student.py --path_t {path} --distill {flags["distill"]} --model_s {student} '
            f'{line_flags(rest)} --trial $TRIAL "$@"')


def plan_groups():
    """{plan name: (teacher, [plan lines])}: one group per teacher, in the order the script runs them."""
    groups = {}
    for teacher, student, flags in script_lines():
        if "run_name" in flags:  # a plan line cannot hold the shell's $TRIAL: a run of its own (render_script)
            continue
        rest = {k: v for k, v in flags.items() if k != "distill"}
        groups.setdefault(teacher, []).append(f"--distill {flags['distill']} --model_s {student} {line_flags(rest)}")
    return groups


def render_script():
    """scripts/run_cifar_distill.sh: grouped (one process per teacher) by default, single runs with GROUP=0."""
    out = ["#!/usr/bin/env sh",
           "# Generated by `python -m helper.recipes --write` from helper/recipes.py: edit the recipes there.",
           "# Distillation on CIFAR-100 with every method's published recipe. GROUP=1 (default): one process per",
           "# teacher trains all its students in one pass over the data (scripts/plans/*.txt); GROUP=0: one process",
           "# per student. Teachers: sh scripts/fetch_pretrained_teachers.sh or sh scripts/run_cifar_vanilla.sh.",
           "# Extra flags apply to every run, e.g.  GROUP=0 sh scripts/run_cifar_distill.sh --device cuda:0",
           "# TRIAL=2 sh scripts/run_cifar_distill.sh: trial 2 (another seed) of every run, HKD's assistant included.",
           "set -e", 'GROUP=${GROUP:-1}', 'TRIAL=${TRIAL:-1}', "", 'if [ "$GROUP" = 1 ]; then']
    own_runs = [line for line in script_lines() if "run_name" in line[2]]
    for teacher in plan_groups():
        path = ASSISTANT if teacher == "assistant" else TEACHER_PATH.format(teacher)
        if teacher == "assistant":
            out += [single_line(*line) for line in own_runs]
        out.append(f'python train_student.py --path_t {path} --plan scripts/plans/cifar100_{teacher}.txt '
                   '--trial $TRIAL "$@"')
    out += ["exit 0", "fi", ""]
    for teacher, student, flags in script_lines():
        out.append(single_line(teacher, student, flags))
    return "\n".join(out) + "\n"


def render_plans():
    """{path: text} of the plan files the grouped script reads."""
    plans = {}
    for teacher, lines in plan_groups().items():
        header = f"# Generated by `python -m helper.recipes --write`: the students of teacher {teacher}, one per line.\n"
        plans[os.path.join("scripts", "plans", f"cifar100_{teacher}.txt")] = header + "\n".join(lines) + "\n"
    return plans


def render_method_table():
    """The README's method table, then every pair-specific value and every published variant."""
    rows = ["`--distill` | paper | consumes | recipe (defaults applied by `train_student.py`) | source",
            "---|---|---|---|---"]
    for method, recipe in RECIPES.items():
        recipe_text = f"`{line_flags(recipe.flags)}`" + (" (+ per pair, below)" if recipe.pairs else "")
        rows.append(f"`{method}` | {recipe.paper} | {recipe.consumes} | {recipe_text} | {recipe.source}")
    rows += ["", "Per teacher -> student pair (applied as defaults on that pair) and published variants (lines of "
             "`scripts/run_cifar_distill.sh`, not defaults):", "",
             "`--distill` | teacher -> student | flags | kind", "---|---|---|---"]
    for method, recipe in RECIPES.items():
        for (teacher, student), flags in recipe.pairs.items():
            text = f"`{line_flags(flags)}`" if flags else "(the method's defaults)"
            rows.append(f"`{method}` | {teacher} -> {student} | {text} | pair")
        for variant in recipe.variants:
            teacher, student = variant.get("_pair", recipe.main_pair)
            flags = {k: v for k, v in variant.items() if k != "_pair"}
            rows.append(f"`{method}` | {teacher} -> {student} | `{line_flags(flags)}` | variant")
    return "\n".join(rows) + "\n"


TABLE_BEGIN = "<!-- method table: generated by `python -m helper.recipes --write` -->"
TABLE_END = "<!-- end of method table -->"


def readme_with_table(readme):
    begin, end = readme.index(TABLE_BEGIN) + len(TABLE_BEGIN), readme.index(TABLE_END)
    return readme[:begin] + "\n" + render_method_table() + readme[end:]


def generated_files():
    """{path relative to the repository: text} of every file generated from the recipes."""
    files = {os.path.join("scripts", "run_cifar_distill.sh"): render_script(), **render_plans()}
    with open(os.path.join(ROOT, "README.md")) as f:
        files["README.md"] = readme_with_table(f.read())
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write (or check) the files generated from helper/recipes.py.")
    parser.add_argument("--write", action="store_true", help="rewrite the generated files")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in generated_files().items():
        path = os.path.join(ROOT, rel)
        current = open(path).read() if os.path.isfile(path) else None
        if current != text:
            stale.append(rel)
            if args.write:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    print(("rewrote: " if args.write else "out of date: ") + (", ".join(stale) or "nothing"))
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())

