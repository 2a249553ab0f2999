"""CRCD's mimic schedule (Zhu et al., CVPR 2021), --mimic_schedule: weights at the boundaries, by hand."""
import pytest

from helper.errors import UserError
from helper.plugins.mimic import MIMIC_SCHEDULES, mimic_weight, task_weight

CIFAR_250 = 250 * 782  # CRCD's CIFAR recipe: 250 epochs of 782 iterations (batch 64)

# (schedule, iteration, total iterations, task weight, mimic weight); 300 iterations make thirds of 100.
CASES = [
    ("constant", 0, 300, 1.0, 1.0),
    ("constant", 299, 300, 1.0, 1.0),
    ("240", 0, CIFAR_250, 1.0, 1.0),
    ("240", 240 * 782 - 1, CIFAR_250, 1.0, 1.0),  # last iteration of epoch 240
    ("240", 240 * 782, CIFAR_250, 1.0, 0.0),      # first iteration of epoch 241
    ("240", CIFAR_250 - 1, CIFAR_250, 1.0, 0.0),
    ("240", 23, 25, 1.0, 1.0),
    ("240", 24, 25, 1.0, 0.0),
    ("linear_decrease", 0, 300, 0.0, 1.0),
    ("linear_decrease", 99, 300, 0.0, 1.0),
    ("linear_decrease", 100, 300, 0.0, 1.0),
    ("linear_decrease", 150, 300, 0.5, 0.5),
    ("linear_decrease", 199, 300, 0.99, 0.01),
    ("linear_decrease", 200, 300, 1.0, 0.0),
    ("linear_decrease", 299, 300, 1.0, 0.0),
    ("linear_decrease2", 0, 300, 1.0, 1.0),
    ("linear_decrease2", 100, 300, 1.0, 1.0),
    ("linear_decrease2", 175, 300, 1.0, 0.25),
    ("linear_decrease2", 200, 300, 1.0, 0.0),
    ("linear_decrease2", 299, 300, 1.0, 0.0),
    ("exp_increase", 0, 300, 1.0, 1.0),
    ("exp_increase", 99, 300, 1.0, 1.0),
    ("exp_increase", 100, 300, 1.0, 2.0),
    ("exp_increase", 199, 300, 1.0, 2.0),
    ("exp_increase", 200, 300, 1.0, 4.0),
    ("exp_increase", 299, 300, 1.0, 4.0),
    ("exp_increase", 3, 10, 1.0, 1.0),  # third = 10/3: 3 // 3.33 = 0
    ("exp_increase", 4, 10, 1.0, 2.0),
    ("exp_increase", 6, 10, 1.0, 2.0),
    ("exp_increase", 7, 10, 1.0, 4.0),
    ("exp_increase", 9, 10, 1.0, 4.0),
]


@pytest.mark.parametrize("name, iteration, total, task, mimic", CASES)
def test_crcd_schedule_values_at_the_boundaries(name, iteration, total, task, mimic):
    assert mimic_weight(name, iteration, total) == pytest.approx(mimic, abs=1e-12)
    assert task_weight(name, iteration, total) == pytest.approx(task, abs=1e-12)
    assert isinstance(mimic_weight(name, iteration, total), float)


def test_linear_decrease_weights_sum_to_one_and_fall_monotonically():
    mimic = [mimic_weight("linear_decrease", i, 90) for i in range(90)]
    assert all(a >= b for a, b in zip(mimic, mimic[1:]))
    assert all(m + task_weight("linear_decrease", i, 90) == pytest.approx(1.0) for i, m in enumerate(mimic))


def test_the_schedule_list_names_every_schedule_and_unknown_names_fail_naming_the_flag():
    assert MIMIC_SCHEDULES == ("constant", "240", "linear_decrease", "linear_decrease2", "exp_increase")
    for name in MIMIC_SCHEDULES:
        mimic_weight(name, 0, 10)
    with pytest.raises(UserError, match="--mimic_schedule"):
        mimic_weight("cosine", 0, 10)
    with pytest.raises(UserError, match="--mimic_schedule"):
        task_weight("cosine", 0, 10)
