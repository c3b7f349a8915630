"""train.schedule: warmup + cosine/linear decay equal transformers' schedulers at every step."""
import math

import numpy as np
import pytest

from train.config import ScheduleConfig
from train.schedule import make_schedule

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _torch_lrs(kind, peak, warmup, total):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    make = {"cosine": transformers.get_cosine_schedule_with_warmup,
            "linear": transformers.get_linear_schedule_with_warmup}[kind]
    sched = make(opt, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])  # the rate the next optimizer.step() uses
        opt.step()
        sched.step()
    return np.asarray(lrs)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("total,ratio", [(100, 0.03), (2181, 0.03), (7, 0.03), (50, 0.0), (10, 0.5)])
def test_schedule_matches_transformers_every_step(kind, total, ratio):
    peak = 2e-5
    cfg = ScheduleConfig(warmup_ratio=ratio, decay=kind)
    warmup = math.ceil(total * ratio)  # TrainingArguments.get_warmup_steps
    assert cfg.warmup(total) == warmup
    ours = np.asarray(make_schedule(cfg, peak, total)(np.arange(total)))
    want = _torch_lrs(kind, peak, warmup, total)
    # float32 against float64: absolute 1e-6 of the peak rate (relative 1e-6 away from 0)
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6 * peak)
    if warmup:
        assert ours[0] == 0.0  # the first update has rate 0, as in the PyTorch trainer


def test_explicit_warmup_steps_and_constant():
    cfg = ScheduleConfig(warmup_steps=4, decay="constant")
    s = make_schedule(cfg, 1.0, 20)
    np.testing.assert_allclose([float(s(n)) for n in (0, 2, 4, 19)], [0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="warmup_steps=30 exceeds"):
        make_schedule(ScheduleConfig(warmup_steps=30), 1.0, 20)
