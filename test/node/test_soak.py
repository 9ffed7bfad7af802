"""60-second soak through the real node: no crash, bounded memory, steady output."""

from bac_ros.node.soak import run_soak


def test_soak_60s(tiny_files):
    """Camera 30 Hz + joints 100 Hz for 60 s: no errors, RSS growth < 5 %, chunks all along."""
    rep = run_soak(tiny_files["checkpoint"], tiny_files["schedule"], duration_s=60.0,
                   window_s=20.0, warmup_s=15.0)
    print(rep)
    assert rep["inference_errors"] == 0 and rep["rejected_inputs"] == 0
    assert rep["rss_growth_frac"] < 0.05, rep
    assert all(w["chunks"] > 5 and w["rss_mb"] for w in rep["windows"]), rep["windows"]
    assert rep["commands"] > 0.8 * 10 * 55  # 10 Hz command stream for most of the minute
