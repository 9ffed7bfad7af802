"""ROS-free node helpers: image/joint conversion, time sync, hand-over, parameters."""

import array

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image, JointState

from bac_ros.node.conversions import ImageConverter, InputError, JointStateMapper
from bac_ros.node.handover import ActionScheduler, Chunk
from bac_ros.node.obs_buffer import ObservationBuffer
from bac_ros.node.params import NodeConfig


def _img(enc, h=4, w=4, step=None, data=None):
    c = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(enc, 3)
    raw = np.arange(h * w * c, dtype=np.uint8) if data is None else data
    return Image(height=h, width=w, encoding=enc, step=step or w * c,
                 data=array.array("B", bytes(raw)))


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_encodings_give_rgb(enc):
    """Every supported encoding becomes the same RGB pixel (numpy path, no cv_bridge)."""
    px = {"rgb8": [10, 20, 30], "bgr8": [30, 20, 10], "rgba8": [10, 20, 30, 99],
          "bgra8": [30, 20, 10, 99], "mono8": [10]}[enc]
    data = np.tile(np.array(px, np.uint8), 4)
    out = ImageConverter((2, 2), use_cv_bridge=False).from_image(_img(enc, 2, 2, data=data))
    want = [10, 20, 30] if enc != "mono8" else [10, 10, 10]
    np.testing.assert_allclose(out[:, 0, 0] * 255, want, atol=1e-4)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32


def test_cv_bridge_path_when_available():
    """With cv_bridge importable (ROS machines), conversion goes through it and agrees."""
    conv = ImageConverter((4, 4), use_cv_bridge=True)
    if conv.bridge is None:
        pytest.skip("cv_bridge is not importable here (ROS installs provide it)")
    msg = _img("bgr8")
    np.testing.assert_allclose(conv.from_image(msg),
                               ImageConverter((4, 4), use_cv_bridge=False).from_image(msg))


@pytest.mark.parametrize("msg, kind", [
    (_img("yuv422"), "bad_encoding"),
    (_img("rgb8", step=5), "bad_image"),
    (_img("rgb8", h=0), "bad_image"),
    (_img("rgb8", h=4, w=8), "bad_image_size"),
])
def test_bad_images(msg, kind):
    """Unsupported encodings, step/data mismatch, empty and wrong-aspect images are named."""
    with pytest.raises(InputError) as e:
        ImageConverter((4, 4), use_cv_bridge=False).from_image(msg)
    assert e.value.kind == kind


def test_resize_and_compressed():
    """Same-aspect images are resized; JPEGs decode; garbage does not."""
    import cv2

    conv = ImageConverter((4, 4), use_cv_bridge=False)
    assert conv.from_image(_img("rgb8", 8, 8)).shape == (3, 4, 4)
    ok, jpg = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    assert conv.from_compressed(CompressedImage(format="jpeg",
                                                data=array.array("B", jpg.tobytes()))).shape == (3, 4, 4)
    with pytest.raises(InputError, match="not a JPEG"):
        conv.from_compressed(CompressedImage(format="jpeg", data=array.array("B", b"xx")))
    with pytest.raises(InputError, match="decode"):  # valid header, truncated body
        conv.from_compressed(CompressedImage(format="jpeg",
                                             data=array.array("B", jpg.tobytes()[:200])))
    with pytest.raises(InputError, match="not jpeg or png"):
        conv.from_compressed(CompressedImage(format="tiff", data=array.array("B", jpg.tobytes())))


def test_joint_mapping_by_name():
    """Joints are picked by name whatever the wire order; bad messages are named."""
    m = JointStateMapper({"agent_pos": ["agent_x", "agent_y"]})
    out = m(JointState(name=["extra", "agent_y", "agent_x"], position=[9.0, 2.0, 1.0]))
    np.testing.assert_array_equal(out["agent_pos"], [1.0, 2.0])
    for msg, kind in [(JointState(name=["agent_x"], position=[1.0]), "missing_joint"),
                      (JointState(name=["agent_x", "agent_y"], position=[1.0]), "bad_joint_state"),
                      (JointState(name=["agent_x", "agent_x", "agent_y"],
                                  position=[1.0, 1.0, 2.0]), "bad_joint_state"),
                      (JointState(name=["agent_x", "agent_y"], position=[1.0, float("nan")]),
                       "nonfinite_joint")]:
        with pytest.raises(InputError) as e:
            m(msg)
        assert e.value.kind == kind


def test_obs_buffer_sync_and_rejections():
    """History frames are matched by stamp; bad stamps are rejected with their kind."""
    b = ObservationBuffer(["cam", "joints"], n_obs_steps=2, period_s=0.1, tolerance_s=0.02)
    for i in range(30):
        t = 100 + i * 0.01
        b.add("joints", t, {"pos": np.array([t], np.float32)}, now_s=200, received_s=0)
        if i % 10 == 0:
            b.add("cam", t, {"img": np.array([t], np.float32)}, now_s=200, received_s=0)
    h = b.latest()
    assert h.stamp_s == pytest.approx(100.2)
    np.testing.assert_allclose(h.obs["img"][0, :, 0], [100.1, 100.2], atol=1e-4)
    np.testing.assert_allclose(h.obs["pos"][0, :, 0], [100.1, 100.2], atol=1e-4)
    for stamp, kind in [(100.0, "out_of_order"), (100.29, "duplicate"), (0.0, "bad_stamp"),
                        (300.0, "future_stamp")]:
        with pytest.raises(InputError) as e:
            b.add("joints", stamp, {"pos": np.zeros(1, np.float32)}, now_s=200, received_s=0)
        assert e.value.kind == kind



def test_obs_buffer_keeps_history_under_a_khz_source():
    """A 5 kHz joint driver with a camera 90 ms behind: the history still spans both frames
    (a fixed-size ring used to hold only the last 80 ms, so no observation was ever complete),
    the stored samples stay bounded, and the extra samples are decimated, not converted."""
    b = ObservationBuffer(["cam", "joints"], n_obs_steps=2, period_s=0.1, tolerance_s=0.03)
    kept = decimated = 0
    for i in range(15000):  # 3 s at 5 kHz
        t = 100 + i * 0.0002
        if b.decimated("joints", t):
            decimated += 1
            continue
        kept += b.add("joints", t, {"pos": np.array([t], np.float32)}, now_s=200, received_s=0)
        if i % 500 == 0 and t >= 100.09:  # 10 Hz camera, stamped 90 ms before the joints
            b.add("cam", t - 0.09, {"img": np.array([t - 0.09], np.float32)}, now_s=200,
                  received_s=0)
    h = b.latest()
    assert h is not None
    np.testing.assert_allclose(h.obs["pos"][0, :, 0], h.obs["img"][0, :, 0], atol=0.003)
    assert decimated > 0.8 * 15000 and kept <= 3 / 0.002 + 1
    assert len(b._src["joints"].stamps) <= b.history_s / 0.002 + 2


def test_handover_modes():
    """replace switches at the new chunk; ensemble averages; past slots are never replayed."""
    s = ActionScheduler("replace")
    s.add(Chunk(np.zeros((8, 1)), t0_s=0.0, dt_s=0.1, chunk_id=1, arrived_s=0.0))
    assert s.action_at(0.31)[0][0] == 0 and s.remaining(0.31) == 5
    s.add(Chunk(np.ones((8, 1)), t0_s=0.2, dt_s=0.1, chunk_id=2, arrived_s=0.3))
    assert s.action_at(0.41) == (np.ones(1), 2)
    assert s.action_at(2.0) is None  # every chunk exhausted: hold
    s.configure("temporal_ensemble", 0.0, 3)
    assert s.action_at(0.41)[0][0] == pytest.approx(0.5)
    s.configure("blend", 0.0, 4)
    a = [s.action_at(t)[0][0] for t in (0.3, 0.4, 0.5, 0.6)]
    assert a == sorted(a) and 0 < a[0] < 1


def test_node_config_validation():
    """Out-of-range and inconsistent settings are rejected with the field named."""
    with pytest.raises(ValueError, match="control_rate_hz"):
        NodeConfig(control_rate_hz=0.0)
    with pytest.raises(ValueError, match="handover"):
        NodeConfig(handover="fastest")
    for bad in ("cuda:", "cuda:x", "gpu", "cuda1"):
        with pytest.raises(ValueError, match="device"):
            NodeConfig(device=bad)
    assert NodeConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError, match="action_min"):
        NodeConfig(action_min=[0.0], action_max=[])


def test_policy_yaml_matches_node_config_defaults():
    """config/policy.yaml lists every runtime parameter with NodeConfig's default (no drift)."""
    from pathlib import Path

    import yaml

    from bac_ros.node.params import parameter_table

    path = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"
    params = yaml.safe_load(path.read_text())["bac_policy"]["ros__parameters"]
    launch_args = {"checkpoint", "schedule", "device", "dtype", "autostart"}  # launch sets them
    for name, _, default, _, _ in parameter_table():
        if name in launch_args or default == []:
            assert name not in params, f"{name} is set by launch / left empty by design"
            continue
        assert name in params, f"config/policy.yaml lacks {name}"
        assert params[name] == default, f"{name}: yaml {params[name]!r} != {default!r}"
    known = {name for name, *_ in parameter_table()}
    assert set(params) <= known, f"unknown parameters in yaml: {set(params) - known}"


def test_frame_id_counts_toward_the_size_limit():
    """Issue 17: a small image with a huge header.frame_id is refused like a huge image."""
    conv = ImageConverter((4, 4), use_cv_bridge=False, max_bytes=1000)
    msg = _img("rgb8", 4, 4)
    msg.header.frame_id = "x" * 5000
    with pytest.raises(InputError, match="max_message_mb"):
        conv.from_image(msg)


def test_planned_actions_for_rtc():
    """`planned`: what the stream will send at t0 + j*dt until a deadline (RTC's frozen
    prefix), masked where no action is planned; None without a chunk."""
    s = ActionScheduler("rtc")
    assert s.planned(0.0, 0.1, 4, 1.0) is None
    acts = np.arange(10, dtype=np.float32).reshape(5, 2)
    s.add(Chunk(acts, t0_s=10.0, dt_s=0.1, chunk_id=1, arrived_s=10.0))
    got, mask = s.planned(10.2, 0.1, 6, until_s=10.45)
    assert mask.tolist() == [True, True, True, False, False, False]  # 10.2, 10.3, 10.4
    np.testing.assert_array_equal(got[:3], acts[2:5])
    got, mask = s.planned(10.3, 0.1, 4, until_s=11.0)  # the chunk ends at slot 4
    assert mask.tolist() == [True, True, False, False]
    assert s.action_at(10.2)[0].tolist() == acts[2].tolist()  # played back as replace
