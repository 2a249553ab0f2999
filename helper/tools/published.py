"""The published numbers `python -m helper.table --paper` prints beside ours, as data, with their sources."""
import logging
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

log = logging.getLogger("kd")


# ---- published numbers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperSet:
    """Published CIFAR-100 top-1 (%) per (teacher, student) pair and method key (see paper_key); `verified`: read
    from the authors' own repository; False: second-hand or ambiguous, shown with a "?" and explained in `source`."""
    source: str
    verified: bool
    numbers: Dict[Tuple[str, str], Dict[str, float]]


def _columns(pairs, rows):
    """{pair: {method: top-1}} from a paper table given as one tuple per method, one entry per pair (None: n/a)."""
    table = {pair: {} for pair in pairs}
    for method, values in rows.items():
        for pair, value in zip(pairs, values, strict=True):
            if value is not None:
                table[pair][method] = value
    return table


CRD_TABLE1 = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
              ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]


CRD_TABLE2 = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
              ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]


REPDISTILLER_README = ("CRD (Tian et al., ICLR 2020) Tables 1 and 2, as given in the authors' RepDistiller README "
                       "(github.com/HobbitLong/RepDistiller)")


PAPER: List[PaperSet] = [
    PaperSet(REPDISTILLER_README, True, {
        **_columns(CRD_TABLE1, {
            "kd": (74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98),
            "hint": (73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02),
            "attention": (74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43),
            "similarity": (73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68),
            "correlation": (73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71),
            "vid": (74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23),
            "rkd": (73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48),
            "pkt": (74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88),
            "abound": (72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94),
            "factor": (73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58),
            "fsp": (72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23),  # n/a for wrn_40_2 -> wrn_40_1 (widths differ)
            "nst": (73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53),
            "crd": (75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94)}),
        **_columns(CRD_TABLE2, {
            "kd": (67.37, 67.35, 73.81, 74.07, 74.45, 74.83),
            "hint": (64.14, 63.16, 70.69, 73.59, 73.54, 73.73),
            "attention": (59.40, 58.58, 71.84, 71.73, 72.73, 73.32),
            "similarity": (66.30, 68.08, 73.34, 73.48, 74.56, 74.52),
            "correlation": (64.86, 65.43, 70.25, 71.14, 71.29, 71.38),
            "vid": (65.56, 67.57, 70.30, 73.38, 73.40, 73.61),
            "rkd": (64.52, 64.43, 71.50, 72.28, 73.21, 72.21),
            "pkt": (67.13, 66.52, 73.01, 74.10, 74.69, 73.89),
            "abound": (66.06, 67.20, 70.65, 73.55, 74.31, 73.34),
            "factor": (61.78, 60.99, 70.29, 71.75, 72.50, 72.03),
            "nst": (58.16, 64.96, 71.28, 74.12, 74.68, 74.89),
            "crd": (69.73, 69.11, 74.30, 75.11, 75.65, 76.05)})}),
    PaperSet("CRD Tables 1 and 2, CRD+KD row: not in the RepDistiller README; quoted from the paper by three forks' "
             "READMEs (Table 1) and one (Table 2), not checked against the paper itself", False, {
                 **_columns(CRD_TABLE1, {"crd+kd": (75.64, 74.38, 71.63, 71.56, 73.75, 75.46, 74.29)}),
                 **_columns(CRD_TABLE2, {"crd+kd": (69.94, 69.54, 74.58, 75.12, 76.05, 76.27)})}),
    PaperSet("DKD (Zhao et al., CVPR 2022) Tables 1 and 2, as given in the authors' mdistiller README "
             "(github.com/megvii-research/mdistiller)", True, {
                 ("resnet56", "resnet20"): {"dkd": 71.97}, ("resnet110", "resnet32"): {"dkd": 74.11},
                 ("resnet32x4", "resnet8x4"): {"dkd": 76.32}, ("wrn_40_2", "wrn_16_2"): {"dkd": 76.23},
                 ("wrn_40_2", "wrn_40_1"): {"dkd": 74.81}, ("vgg13", "vgg8"): {"dkd": 74.68},
                 ("resnet32x4", "ShuffleV1"): {"dkd": 76.45}, ("wrn_40_2", "ShuffleV1"): {"dkd": 76.70},
                 ("vgg13", "MobileNetV2"): {"dkd": 69.71}, ("ResNet50", "MobileNetV2"): {"dkd": 70.35}}),
    PaperSet("DKD, mdistiller README: this column is headed 'ResNet32x4 -> MobileNet-V2' there, but its KD baseline "
             "(74.45) is CRD's resnet32x4 -> ShuffleV2 and mdistiller's DKD configs have res32x4_shuv2, no "
             "resnet32x4 -> MobileNetV2; the pair is inferred", False, {
                 ("resnet32x4", "ShuffleV2"): {"dkd": 77.07}}),
    PaperSet("CTKD (Li et al., AAAI 2023), '+CTKD' on KD, as given in the authors' README (github.com/zhengli97/CTKD); "
             "it does not say global or instance temperature (its script runs global), so it is shown for both", True, {
                 ("resnet56", "resnet20"): {"kd+ctkd": 71.19}, ("resnet110", "resnet32"): {"kd+ctkd": 73.52},
                 ("resnet110", "resnet20"): {"kd+ctkd": 70.99}, ("wrn_40_2", "wrn_16_2"): {"kd+ctkd": 75.45},
                 ("wrn_40_2", "wrn_40_1"): {"kd+ctkd": 73.93}, ("vgg13", "vgg8"): {"kd+ctkd": 73.52}}),
]


# Teachers and vanilla students (trained alone, cross-entropy), CRD Tables 1 and 2's first row.
PAPER_VANILLA = PaperSet(REPDISTILLER_README, True, {
    (arch, ""): {"vanilla": acc} for arch, acc in {
        "wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64,
        "ResNet50": 79.34, "wrn_16_2": 73.26, "wrn_40_1": 71.98, "resnet20": 69.06, "resnet32": 71.14,
        "resnet8x4": 72.50, "vgg8": 70.36, "MobileNetV2": 64.60, "ShuffleV1": 70.50, "ShuffleV2": 71.82}.items()})


PAPER_DATASET = "cifar100"


class Published(NamedTuple):
    """A published number: its value, the PaperSet it comes from, and the paper's method key."""
    value: float
    source: PaperSet
    method: str


def paper_number(pair, key, sets) -> Optional[Published]:
    """The published top-1 of method `key` on `pair`, or None."""
    for paper_set in sets:
        value = paper_set.numbers.get(pair, {}).get(key)
        if value is not None:
            return Published(value, paper_set, key)
    return None
