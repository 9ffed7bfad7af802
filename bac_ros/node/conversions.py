"""ROS messages -> numpy observations, with the checks a robot needs (no rclpy import).

Uses cv_bridge when it is importable (ROS installs); otherwise an equivalent numpy
conversion. PyPI's ``cv-bridge`` is the ROS 1 port and breaks with numpy 2, so it is
never a dependency (see ROS2_NOTES.md).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import cv2  # imported up front: a first import inside a callback stalls the node for seconds
import numpy as np

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def stamp_s(stamp) -> float:
    """builtin_interfaces/Time -> seconds; a malformed stamp (nanosec >= 1e9) is refused."""
    if not 0 <= stamp.nanosec < 1_000_000_000:
        raise InputError("bad_stamp", f"header stamp nanosec={stamp.nanosec} is outside "
                         "[0, 1e9): the driver fills builtin_interfaces/Time incorrectly")
    return stamp.sec + stamp.nanosec * 1e-9


class InputError(ValueError):
    """A message that cannot become an observation; ``kind`` names the counter."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _cv_bridge():
    try:
        from cv_bridge import CvBridge  # type: ignore

        return CvBridge()
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None


class ImageConverter:
    """sensor_msgs/Image or CompressedImage -> float32 (3, H, W) in [0, 1], RGB."""

    def __init__(self, out_hw: tuple[int, int], use_cv_bridge: bool = True,
                 max_aspect_error: float = 0.02, max_bytes: int = 64 * 2**20):
        self.out_hw = tuple(out_hw)
        self.bridge = _cv_bridge() if use_cv_bridge else None
        self.max_aspect_error = max_aspect_error
        self.max_bytes = max_bytes

    def _check_size(self, n_bytes: int) -> None:
        # Before any decode or resize: a runaway driver must not stall the executor.
        if n_bytes > self.max_bytes:
            raise InputError("too_large", f"image message of {n_bytes / 2**20:.1f} MB exceeds "
                             f"max_message_mb={self.max_bytes / 2**20:g}; lower the camera "
                             "resolution or raise max_message_mb")

    def from_image(self, msg) -> np.ndarray:
        self._check_size(len(msg.data) + len(msg.header.frame_id))  # frame_id counts too
        enc = msg.encoding.lower()
        if enc not in CHANNELS:
            raise InputError("bad_encoding", f"unsupported image encoding {msg.encoding!r}; "
                             f"publish one of {sorted(CHANNELS)}")
        h, w, c = int(msg.height), int(msg.width), CHANNELS[enc]
        data = msg.data
        if h == 0 or w == 0 or len(data) == 0:
            raise InputError("bad_image", f"empty image ({w}x{h}, {len(data)} bytes)")
        if msg.step < w * c or len(data) != msg.step * h:
            raise InputError("bad_image", f"image step/data mismatch: {w}x{h} {enc} needs step"
                             f" >= {w * c} and len(data) == step*height; got step {msg.step}, "
                             f"{len(data)} bytes")
        if self.bridge is not None:
            rgb = self.bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        else:
            buf = as_uint8(data)
            img = buf.reshape(h, msg.step)[:, : w * c].reshape(h, w, c)
            rgb = to_rgb(img, enc)
        return self._finish(rgb)

    def from_compressed(self, msg) -> np.ndarray:
        self._check_size(len(msg.data) + len(msg.header.frame_id))  # frame_id counts too
        buf = as_uint8(msg.data)
        codec = compressed_codec(msg.format)
        w, h = compressed_dimensions(buf, codec, msg.format)
        # Decoded size from the header, before decoding: a 631-byte JPEG may declare
        # 20000x20000 pixels (1.2 GB decoded); PNG bombs likewise.
        if w * h * 3 > self.max_bytes:
            raise InputError("too_large", f"compressed image declares {w}x{h} pixels "
                             f"({w * h * 3 / 2**20:.0f} MB decoded), above max_message_mb="
                             f"{self.max_bytes / 2**20:g}; not decoded")
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if bgr is None:
            raise InputError("bad_image", f"compressed image ({msg.format!r}, {buf.size} bytes)"
                             " failed to decode")
        return self._finish(bgr[..., ::-1])

    def _finish(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        oh, ow = self.out_hw
        if (h, w) != (oh, ow):
            if abs((w / h) / (ow / oh) - 1) > self.max_aspect_error:
                raise InputError("bad_image_size", f"image is {w}x{h} but the policy expects "
                                 f"{ow}x{oh} (aspect ratio differs; crop the camera stream)")
            interp = cv2.INTER_AREA if h > oh else cv2.INTER_LINEAR
            rgb = cv2.resize(np.ascontiguousarray(rgb), (ow, oh), interpolation=interp)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0


_COLOUR = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


def compressed_codec(fmt: str) -> str:
    """'jpeg' or 'png' from sensor_msgs/CompressedImage.format, for colour images only.

    image_transport writes e.g. "jpeg", "rgb8; jpeg compressed bgr8", "bgr8; png compressed
    bgr8", and "16UC1; png compressed" for depth: a depth image must not be read as colour,
    and no other decoder is reachable from a message."""
    f = str(fmt).strip().lower()
    head, _, tail = f.partition(";")
    if tail and head.strip() not in _COLOUR:
        raise InputError("bad_encoding", f"compressed image format {fmt[:80]!r}: source "
                         f"encoding {head.strip()!r} is not a colour image ({_COLOUR})")
    codec = tail or head
    if "jpeg" in codec or "jpg" in codec:
        return "jpeg"
    if "png" in codec:
        return "png"
    raise InputError("bad_encoding", f"compressed image format {fmt[:80]!r} is not jpeg or "
                     "png (the formats image_transport's compressed plugin writes)")


def compressed_dimensions(buf: np.ndarray, codec: str, fmt: str) -> tuple[int, int]:
    """(width, height) from a JPEG SOF or PNG IHDR header, without decoding."""
    b = buf.tobytes()
    if codec == "png":
        if len(b) < 24 or b[:8] != b"\x89PNG\r\n\x1a\n" or b[12:16] != b"IHDR":
            raise InputError("bad_image", f"compressed image says {fmt[:40]!r} but is not a "
                             "PNG (no PNG signature / IHDR)")
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if len(b) < 4 or b[:2] != b"\xff\xd8":
        raise InputError("bad_image", f"compressed image says {fmt[:40]!r} but is not a JPEG "
                         "(no SOI marker)")
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            i += 1
            continue
        marker = b[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        seg = int.from_bytes(b[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(b):
                break
            return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
        if marker == 0xDA:  # start of scan before any frame header
            break
        i += 2 + seg
    raise InputError("bad_image", "JPEG without a frame header (SOF): not decoded")


def as_uint8(data) -> np.ndarray:
    """Message byte arrays arrive as array.array / bytes / lists depending on the path."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def to_rgb(img: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "rgb8":
        return img
    if encoding == "bgr8":
        return img[..., ::-1]
    if encoding == "rgba8":
        return img[..., :3]
    if encoding == "bgra8":
        return img[..., 2::-1]
    if encoding == "mono8":
        return np.repeat(img, 3, axis=2)
    raise InputError("bad_encoding", f"unsupported image encoding {encoding!r}")


class JointStateMapper:
    """sensor_msgs/JointState -> {obs key: vector} by joint NAME (wire order may differ)."""

    def __init__(self, key_names: dict[str, Sequence[str]], max_bytes: int = 64 * 2**20):
        self.key_names = {k: list(v) for k, v in key_names.items()}
        self.max_bytes = max_bytes

    def __call__(self, msg) -> dict[str, np.ndarray]:
        n_bytes = len(msg.header.frame_id) + sum(len(n) for n in msg.name) + 8 * (
            len(msg.position) + len(msg.velocity) + len(msg.effort))
        if n_bytes > self.max_bytes:
            raise InputError("too_large", f"JointState of {n_bytes / 2**20:.1f} MB "
                             f"({len(msg.name)} names) exceeds max_message_mb="
                             f"{self.max_bytes / 2**20:g}")
        names, pos = list(msg.name), list(msg.position)
        if len(names) != len(pos):
            raise InputError("bad_joint_state", f"JointState has {len(names)} names but "
                             f"{len(pos)} positions")
        if len(set(names)) != len(names):
            counts = Counter(names)  # not names.count(): quadratic on a huge message
            dups = sorted(n for n, c in counts.items() if c > 1)[:8]
            raise InputError("bad_joint_state", f"duplicate joint names {dups}")
        index = {n: i for i, n in enumerate(names)}
        out = {}
        for key, wanted in self.key_names.items():
            missing = [n for n in wanted if n not in index]
            if missing:
                raise InputError("missing_joint", f"JointState lacks joints {missing} needed "
                                 f"for observation {key!r} (has {names[:8]})")
            vec = np.array([pos[index[n]] for n in wanted], dtype=np.float32)
            if not all(math.isfinite(v) for v in vec):
                raise InputError("nonfinite_joint", f"JointState has NaN/inf in {key!r}: "
                                 f"{vec.tolist()}")
            out[key] = vec
        return out
