"""Issue 17, class 4: values that used to be accepted silently are refused with a reason."""

import math

import pytest
import yaml
from builtin_interfaces.msg import Time

from bac_ros.bac.baselines import build_schedule
from bac_ros.bac.schedule import ScheduleFormatError, load_schedule, save_schedule
from bac_ros.engine.config import PolicyConfig
from bac_ros.engine.testing import make_tiny_policy
from bac_ros.node.conversions import InputError, stamp_s
from bac_ros.node.params import NodeConfig


@pytest.mark.parametrize("lims", [([math.nan], [1.0]), ([0.0, math.nan], [1.0, 1.0]),
                                  ([math.nan, math.nan], [math.nan, math.nan])])
def test_nan_action_limits_refused(lims):
    with pytest.raises(ValueError, match="finite"):
        NodeConfig(action_min=lims[0], action_max=lims[1])


@pytest.mark.parametrize("period", [math.inf, math.nan, -1.0, 0.0])
def test_checkpoint_control_period_must_be_finite(period):
    d = make_tiny_policy("lowdim", num_inference_steps=2).config.to_dict()
    d["control_period_s"] = period
    with pytest.raises(ValueError, match="control_period_s"):
        PolicyConfig.from_dict(d)


def test_stamp_nanosec_out_of_range_refused():
    assert stamp_s(Time(sec=3, nanosec=500_000_000)) == 3.5
    with pytest.raises(InputError, match="nanosec"):
        stamp_s(Time(sec=3, nanosec=1_000_000_000))


def _edited(tmp_path, edit):
    p = make_tiny_policy("lowdim", num_inference_steps=6)
    sched = build_schedule("uniform", p.model.blocks(), 6, 3, p.fingerprint, "ddpm")
    path = save_schedule(sched, tmp_path / "s.yaml")
    text = edit(path.read_text())
    path.write_text(text)
    return path


def test_schedule_id_covers_every_field(tmp_path):
    """Editing the sampler (or any field) keeps no valid id: the file is refused."""
    path = _edited(tmp_path, lambda t: t.replace("scheduler_type: ddpm", "scheduler_type: ddim"))
    with pytest.raises(ScheduleFormatError, match="schedule_id"):
        load_schedule(path)


def test_boolean_schedule_step_refused(tmp_path):
    def edit(text):
        d = yaml.safe_load(text)
        d["blocks"][next(iter(d["blocks"]))] = [0, True]
        d.pop("schedule_id")
        return yaml.safe_dump(d)

    with pytest.raises(ScheduleFormatError, match="integers"):
        load_schedule(_edited(tmp_path, edit))


def test_schedule_yaml_alias_bomb_and_size_refused(tmp_path):
    """Issue 17, class 3: a few hundred bytes of YAML aliases that expand exponentially, and
    an oversized file, are refused before they are built."""
    bomb = "a: &a [x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(24))
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(ScheduleFormatError, match="aliases"):
        load_schedule(tmp_path / "bomb.yaml")
    (tmp_path / "big.yaml").write_text("# " + "x" * (3 * 2**20))
    with pytest.raises(ScheduleFormatError, match="larger than"):
        load_schedule(tmp_path / "big.yaml")


def test_unknown_sampler_names_the_file(tmp_path):
    def edit(text):
        d = yaml.safe_load(text)
        d["scheduler_type"] = "dpm_solver"
        d.pop("schedule_id")
        return yaml.safe_dump(d)

    with pytest.raises(ScheduleFormatError, match=r"s\.yaml.*scheduler_type"):
        load_schedule(_edited(tmp_path, edit))
