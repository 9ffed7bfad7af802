"""`bac convert`: diffusion_policy .ckpt -> our safetensors, through the real CLI entry."""

import json

import numpy as np
import pytest
import torch

from bac_ros.cli.main import main
from bac_ros.engine.checkpoint import CheckpointError, load_policy
from bac_ros.engine.testing import lowdim_dp_policy, random_obs, save_dp_checkpoint


def test_convert_round_trip_identical_actions(tmp_path, capsys):
    """Converted file loads without pickle and gives bit-identical actions and fingerprint."""
    p = lowdim_dp_policy(seed=3, num_inference_steps=5)
    ckpt = save_dp_checkpoint(p, tmp_path / "in.ckpt")
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(ckpt), str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fingerprint"] == p.fingerprint and info["output"] == str(out)
    q = load_policy(out)
    obs = random_obs(p, batch=2)
    noise = torch.randn(2, p.config.horizon, 2, generator=torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(p.predict(obs, noise=noise).action_pred,
                                  q.predict(obs, noise=noise).action_pred)
    assert q.config.to_dict() == load_policy(ckpt).config.to_dict()


def test_convert_fp16_is_smaller(tmp_path):
    """--fp16 roughly halves the file; rounded weights give a different fingerprint."""
    ckpt = save_dp_checkpoint(lowdim_dp_policy(num_inference_steps=5), tmp_path / "in.ckpt")
    full, half = tmp_path / "f.safetensors", tmp_path / "h.safetensors"
    assert main(["convert", str(ckpt), str(full)]) == 0
    assert main(["convert", str(ckpt), str(half), "--fp16"]) == 0
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert load_policy(half).fingerprint != load_policy(full).fingerprint


def test_convert_bad_input_names_the_file(tmp_path):
    """A truncated input fails with CheckpointError naming the file, and writes nothing."""
    ckpt = save_dp_checkpoint(lowdim_dp_policy(num_inference_steps=5), tmp_path / "in.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(ckpt.read_bytes()[:4096])
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(bad), str(out)]) == 2  # one line, no traceback
    assert not out.exists()
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        main(["--debug", "convert", str(bad), str(out)])
    assert not out.exists()


def test_cli_never_overwrites_its_input_and_keeps_modes(tmp_path, capsys):
    """Issue 17, class 2: `bac convert a a`, `bac convert a a --fp16` and `bac calibrate P
    --out P` refuse (exit 2, one line, input untouched); an existing output keeps its mode."""
    import os

    ckpt = save_dp_checkpoint(lowdim_dp_policy(num_inference_steps=5), tmp_path / "in.ckpt")
    before = ckpt.read_bytes()
    assert main(["convert", str(ckpt), str(ckpt)]) == 2
    out = tmp_path / "p.safetensors"
    assert main(["convert", str(ckpt), str(out)]) == 0
    st = out.read_bytes()
    assert main(["convert", str(out), str(out), "--fp16"]) == 2
    assert main(["calibrate", str(out), "--out", str(out), "--no-plots"]) == 2
    link = tmp_path / "link.safetensors"
    link.symlink_to(out)
    assert main(["convert", str(out), str(link)]) == 2
    assert ckpt.read_bytes() == before and out.read_bytes() == st
    err = capsys.readouterr().err
    assert err.count("refusing to overwrite") == 4 and "Traceback" not in err
    os.chmod(out, 0o600)
    assert main(["convert", str(ckpt), str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert main(["convert", str(tmp_path / "missing.ckpt"), str(tmp_path / "x.safetensors")]) == 2
    assert main(["convert", str(ckpt), str(tmp_path)]) == 2  # a directory as output
    err = capsys.readouterr().err
    assert "missing.ckpt" in err and "Traceback" not in err
