"""Issue 17, class 1: a checkpoint's cfg is read as plain data. No OmegaConf object is built
and no OmegaConf resolver runs on the restricted path; interpolations other than references
and bounded ${eval:} arithmetic stay literal text; hostile sizes are refused before anything
is allocated. Through `bac convert` (the real CLI entry) and load_policy (the node's loader)."""

import json

import dill
import pytest
import torch

from bac_ros.cli.main import main
from bac_ros.engine.checkpoint import CheckpointError, load_policy, save_policy
from bac_ros.engine.dp_export import dp_cfg
from bac_ros.engine.testing import lowdim_dp_policy, make_tiny_policy, save_dp_checkpoint


def _ckpt_with_cfg(tmp_path, mutate, name="in.ckpt"):
    p = lowdim_dp_policy(num_inference_steps=4)
    path = save_dp_checkpoint(p, tmp_path / name)
    payload = torch.load(path, weights_only=False, pickle_module=dill)
    cfg = dp_cfg(p)
    mutate(cfg)
    payload["cfg"] = cfg
    torch.save(payload, path.open("wb"), pickle_module=dill)
    return path


def test_omegaconf_objects_are_never_built(tmp_path, monkeypatch):
    """If loading constructed a DictConfig or node, these would raise: it loads anyway."""
    import omegaconf.base
    import omegaconf.dictconfig

    path = save_dp_checkpoint(lowdim_dp_policy(num_inference_steps=4), tmp_path / "p.ckpt")

    def boom(self, state):
        raise AssertionError("an OmegaConf object was built from the checkpoint")

    monkeypatch.setattr(omegaconf.dictconfig.DictConfig, "__setstate__", boom)
    monkeypatch.setattr(omegaconf.base.Node, "__setstate__", boom, raising=False)
    q = load_policy(path)
    assert q.config.transformer.cond_dim > 0  # ${eval:...} still resolved, by us


def test_env_interpolation_is_not_resolved(tmp_path, monkeypatch, capsys):
    """${oc.env:...} in the cfg never copies an environment variable into the policy."""
    monkeypatch.setenv("BAC_SECRET_TOKEN", "s3cr3t-value")

    def mutate(cfg):
        cfg.policy["_target_"] = ("diffusion_policy.policy.diffusion_transformer_lowdim_policy."
                                  "DiffusionTransformerLowdimPolicy${oc.env:BAC_SECRET_TOKEN}")

    ckpt = _ckpt_with_cfg(tmp_path, mutate)
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(ckpt), str(out), "--json"]) == 0
    capsys.readouterr()
    assert b"s3cr3t-value" not in out.read_bytes()
    assert "s3cr3t" not in load_policy(out).config.name


@pytest.mark.parametrize("expr", ["9**9**9", "'a' * 10**9", "[1] * 10**9", "__import__('os')"])
def test_eval_bombs_are_refused(tmp_path, expr):
    def mutate(cfg):
        cfg.policy["n_action_steps"] = "${eval:\"" + expr + "\"}"

    ckpt = _ckpt_with_cfg(tmp_path, mutate)
    with pytest.raises(CheckpointError, match="cfg"):
        load_policy(ckpt)


def test_unresolvable_needed_field_names_the_problem(tmp_path):
    def mutate(cfg):
        cfg.policy["horizon"] = "${oc.env:HOME}"

    with pytest.raises(CheckpointError, match="malformed|interpolation"):
        load_policy(_ckpt_with_cfg(tmp_path, mutate))


@pytest.mark.parametrize("field, value", [("horizon", 8_000_000), ("n_layer", 100_000),
                                          ("num_train_timesteps", 1_000_000_000),
                                          ("num_keypoints", 10_000_000),
                                          ("conv_channels", [32, 5_000_000])])
def test_hostile_sizes_in_safetensors_are_refused(tmp_path, field, value):
    """Config values that would allocate gigabytes or hang are refused before allocation."""
    from safetensors.torch import load_file, save_file

    image = field in ("num_keypoints", "conv_channels")
    p = make_tiny_policy("image" if image else "lowdim", num_inference_steps=4)
    path = save_policy(p, tmp_path / "p.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    key = next(k for k in meta if "config" in k)
    cfg = json.loads(meta[key])
    for section in (cfg, cfg.get("transformer", {}), cfg.get("scheduler", {}),
                    cfg.get("obs_encoder") or {}):
        if field in section:
            section[field] = value
    meta[key] = json.dumps(cfg)
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises((CheckpointError, ValueError), match="limit|must|horizon|exceed"):
        load_policy(path)


@pytest.mark.parametrize("edit", ["null", "list", "dup_names", "int_weights"])
def test_malformed_safetensors_refused_with_the_file_named(tmp_path, edit):
    """Issue 17, classes 4-5: malformed configs and non-float weights give a CheckpointError
    naming the file (the node's "cannot start: ..." line), never a traceback."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    p = make_tiny_policy("lowdim", num_inference_steps=4)
    path = save_policy(p, tmp_path / "p.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    key = next(k for k in meta if "config" in k)
    weights = load_file(str(path))
    cfg = json.loads(meta[key])
    if edit == "null":
        meta[key] = "null"
    elif edit == "list":
        meta[key] = "[]"
    elif edit == "dup_names":
        cfg["action_names"] = ["a", "a"]
        meta[key] = json.dumps(cfg)
    else:
        k0 = next(iter(weights))
        weights[k0] = weights[k0].to(torch.int8)
    save_file(weights, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="p.safetensors|duplicate"):
        load_policy(path)


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("bomb", ["bytes", "bytearray", "compressed", "legacy", "fifo_file",
                                  "tar_fifo"])
def test_container_and_allocation_bombs_are_refused(tmp_path, bomb):
    """Issue 17: a few KB that would allocate gigabytes (bytes(10**10), a compressed record) or
    block forever (a FIFO, a tar member that is a FIFO) are refused before they act; the legacy
    torch format needs --allow-pickle."""
    import io
    import os
    import tarfile
    import zipfile

    from bac_ros.engine.checkpoint import read_dp_payload

    path = tmp_path / "p.ckpt"
    if bomb in ("bytes", "bytearray"):
        alloc = {"bytes": bytes, "bytearray": bytearray}[bomb]
        torch.save({"cfg": {}, "x": _Reduce(alloc, (10**10,))}, path)
        match = "memory bomb"
    elif bomb == "compressed":
        torch.save({"cfg": {}}, path)
        with zipfile.ZipFile(path) as z:
            items = [(i.filename, z.read(i.filename)) for i in z.infolist()]
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, data in items:
                z.writestr(name, data)
        match = "compressed records"
    elif bomb == "legacy":
        torch.save({"cfg": {}, "state_dicts": {}}, path, _use_new_zipfile_serialization=False)
        assert read_dp_payload(path, allow_pickle=True)["cfg"] == {}  # trusted: still readable
        match = "not a zip archive"
    elif bomb == "fifo_file":
        os.mkfifo(path)
        match = "not a regular file"
    else:
        with tarfile.open(path, "w") as tf:
            info = tarfile.TarInfo("storages")
            info.type = tarfile.FIFOTYPE
            tf.addfile(info)
            data = b"x" * 10
            reg = tarfile.TarInfo("sys_info")
            reg.size = len(data)
            tf.addfile(reg, io.BytesIO(data))
        match = "not regular files"
    with pytest.raises(CheckpointError, match=match):
        read_dp_payload(path, allow_pickle=bomb == "tar_fifo")
