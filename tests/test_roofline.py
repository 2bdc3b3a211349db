"""Roofline arithmetic on known cases, the row annotation the sweep calls, and the plots."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import pytest
import torch

from tritonlab.hw import devices
from tritonlab.ops import registry
from tritonlab.report import plots, roofline

H100 = devices.lookup("NVIDIA H100 80GB HBM3")
H200 = devices.lookup("NVIDIA H200")
MATMUL = registry.discover()["matmul"]


def _h100_peaks(measured=None) -> devices.Peaks:
    return devices.Peaks("NVIDIA H100 80GB HBM3", "cuda", H100.ceilings(), measured, H100.name)


def _matmul_row(m, n, k, dtype=torch.bfloat16, **extra) -> dict:
    shape = {"M": m, "N": n, "K": k}
    flops = MATMUL.flops(shape, "fwd")
    nbytes = MATMUL.bytes(shape, dtype, "fwd")
    return {"op": "matmul", "impl": "triton", "mode": "fwd", "dtype": str(dtype)[6:],
            "shape": shape, "flops": flops, "bytes": nbytes, "intensity": flops / nbytes,
            "error": None, **extra}


def test_matmul_flops_agree_with_torch_flop_counter():
    # imported here, after the kernels: it imports triton, and triton imported before the
    # backend sets TRITON_INTERPRET breaks every interpreted launch of the process
    from torch.utils.flop_counter import FlopCounterMode

    a = torch.empty(4096, 4096, device="meta", dtype=torch.bfloat16)
    with FlopCounterMode(display=False) as counter:
        torch.matmul(a, a)
    assert counter.get_total_flops() == _matmul_row(4096, 4096, 4096)["flops"]


def test_ridge_points():
    c = H100.ceilings()
    assert roofline.ridge(c.peak("bfloat16"), c.bandwidth_gbps) == pytest.approx(295, abs=1)
    assert H200.ceilings().ridge("bfloat16") == pytest.approx(206, abs=1)
    assert c.ridge("float32") == pytest.approx(67e3 / 3350)


def test_square_4096_bf16_matmul_is_compute_bound_on_h100():
    row = _matmul_row(4096, 4096, 4096, tflops=700.0)
    assert row["intensity"] == pytest.approx(4096 / 3, rel=1e-9)  # 2n^3 / (3 * 2 n^2)
    roofline.annotate_row(row, _h100_peaks())
    assert row["roofline_bound"] == "compute"
    assert row["roofline_tflops"] == pytest.approx(989.4)
    assert row["pct_roofline"] == pytest.approx(100 * 700 / 989.4)


def test_decode_m1_is_memory_bound_at_about_m_flop_per_byte():
    row = _matmul_row(1, 4096, 4096, tflops=2.0)
    assert row["intensity"] == pytest.approx(1.0, rel=0.01)  # ~M FLOP/byte in bf16
    roofline.annotate_row(row, _h100_peaks())
    assert row["roofline_bound"] == "memory"
    assert row["roofline_tflops"] == pytest.approx(row["intensity"] * 3.35)
    assert row["pct_roofline"] == pytest.approx(100 * 2.0 / row["roofline_tflops"])
    for m in (2, 4, 8, 16):  # the whole decode range stays left of the ridge
        r = _matmul_row(m, 4096, 4096)
        assert r["intensity"] == pytest.approx(m, rel=0.02)
        assert roofline.bound(r["intensity"], 989.4, 3350) == "memory"


def test_annotate_keeps_spec_and_measured_apart():
    measured = devices.Ceilings("measured", {"bfloat16": 790.0}, 3000.0)
    row = _matmul_row(4096, 4096, 4096, tflops=700.0)
    roofline.annotate_row(row, _h100_peaks(measured))
    assert row["roofline_tflops_measured"] == pytest.approx(790.0)
    assert row["pct_roofline_measured"] == pytest.approx(100 * 700 / 790)
    assert row["pct_roofline"] == pytest.approx(100 * 700 / 989.4)
    small = _matmul_row(16, 4096, 4096, tflops=10.0)
    roofline.annotate_row(small, _h100_peaks(measured))
    assert small["roofline_tflops_measured"] == pytest.approx(small["intensity"] * 3.0)
    assert small["roofline_tflops"] == pytest.approx(small["intensity"] * 3.35)


def test_annotate_nulls_where_nothing_is_known():
    row = _matmul_row(64, 64, 64, tflops=1e-4)
    roofline.annotate_row(row, None)
    assert all(row[f] is None for f in roofline.ROW_FIELDS)
    failed = _matmul_row(64, 64, 64, tflops=None, error="OOM: out of memory")
    roofline.annotate_row(failed, _h100_peaks())
    assert failed["roofline_tflops"] is not None and failed["pct_roofline"] is None
    no_bytes = {**_matmul_row(64, 64, 64, tflops=1.0), "intensity": None, "bytes": 0}
    roofline.annotate_row(no_bytes, _h100_peaks())
    assert no_bytes["roofline_tflops"] is None
    cpu_only = devices.Peaks("cpu", "interpreter", None,
                             devices.Ceilings("m", {"float32": 0.1}, 10.0))
    half = _matmul_row(64, 64, 64, torch.float16, tflops=1e-5)
    roofline.annotate_row(half, cpu_only)  # no fp16 ceiling measured
    assert half["roofline_tflops_measured"] is None and half["roofline_tflops"] is None


def test_fp32_uses_cuda_core_peak_unless_tf32():
    row = _matmul_row(4096, 4096, 4096, torch.float32, tflops=40.0)
    assert roofline.compute_key(row) == "float32"
    roofline.annotate_row(row, _h100_peaks())
    assert row["roofline_tflops"] == pytest.approx(67.0)
    tf32 = {**row, "config": {"INPUT_PRECISION": "tf32"}}
    assert roofline.compute_key(tf32) == "tf32"
    roofline.annotate_row(tf32, _h100_peaks())
    assert tf32["roofline_tflops"] == pytest.approx(494.7)


def _points():
    rows = []
    for m in (1, 16, 4096):
        for impl, frac in (("triton", 0.7), ("torch", 0.8)):
            for mode in ("fwd", "infer"):
                r = _matmul_row(m, 4096, 4096, impl=impl, mode=mode)
                roof = roofline.attainable_tflops(r["intensity"], 989.4, 3350)
                r["tflops"] = frac * roof
                r["speedup"] = {"torch": 0.9} if impl == "triton" else None
                rows.append(r)
    fused = _matmul_row(256, 4096, 4096, op="linear_gelu", mode="infer", tflops=300.0)
    fused["unfused_intensity"] = fused["flops"] / (fused["bytes"] + 4 * 256 * 4096)
    return rows + [fused]


def _decodes(path, min_w=600):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[1] >= min_w and img.shape[0] >= 300
    return img


def test_roofline_plot(tmp_path):
    path = plots.plot_roofline(_points(), _h100_peaks(), backend="cuda",
                                  device="NVIDIA H100 80GB HBM3", path=tmp_path / "r.png")
    img = _decodes(path)
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_plottable_keeps_one_point_per_key_and_drops_failures():
    rows = _points()
    again = {**rows[0], "tflops": 1.0}  # a resumed run measured rows[0]'s point again
    failed = {**_matmul_row(8, 8, 8), "tflops": 5.0, "error": "mismatch"}
    nan = {**_matmul_row(9, 9, 9), "tflops": math.nan}
    pts = plots.plottable(rows + [again, failed, nan])
    assert len(pts) == len(rows)
    same = [p for p in pts if (p["impl"], p["mode"], p["shape"]) ==
            (rows[0]["impl"], rows[0]["mode"], rows[0]["shape"])]
    assert len(same) == 1 and same[0]["tflops"] == 1.0


def test_plots_refuse_no_points(tmp_path):
    failed = [_matmul_row(64, 64, 64, tflops=None, error="compile error")]
    with pytest.raises(plots.NoPoints, match="no successful measured point"):
        plots.plot_roofline(failed, None, backend="interpreter", device="cpu",
                               path=tmp_path / "x.png")
    with pytest.raises(plots.NoPoints, match="no speedup"):
        plots.plot_speedups(failed, op="matmul", backend="interpreter", device="cpu",
                               path=tmp_path / "y.png")
    with pytest.raises(plots.NoPoints):
        plots.plot_phase_bars([{"mode": "train", "impl": "t", "batch": 1}],
                                 [("avg_power_w", "W")], title="t", backend="cuda",
                                 device="d", path=tmp_path / "z.png")
    assert not list(tmp_path.iterdir())


def test_speedup_and_phase_plots(tmp_path):
    _decodes(plots.plot_speedups(_points(), op="matmul", backend="cuda", device="H100",
                                    path=tmp_path / "s.png"))
    phases = [{"mode": m, "impl": i, "batch": b, "avg_power_w": w * b ** 0.1,
               "throughput_samples_s": 100.0 * b, "error": None}
              for m, w in (("train", 500.0), ("infer", 200.0))
              for i in ("triton", "torch") for b in (1, 256)]
    _decodes(plots.plot_phase_bars(phases, [("avg_power_w", "power (W)"),
                                               ("throughput_samples_s", "samples/s"),
                                               ("energy_j", "never measured")],
                                      title="t", backend="cuda", device="H100",
                                      path=tmp_path / "p.png"))


def test_speedup_bars_read_both_ways(tmp_path):
    """Faster and slower impls, a shape one series lacks: bars either side of parity."""
    rows = [{**_matmul_row(m, 64, 64), "impl": impl, "mode": mode, "speedup": {"torch": s}}
            for m, impl, mode, s in ((1, "triton", "fwd", 0.002), (64, "triton", "fwd", 3.0),
                                     (64, "triton", "infer", 1.0), (1, "tiled", "infer", 0.7))]
    _decodes(plots.plot_speedups(rows, op="matmul", backend="interpreter", device="cpu",
                                 path=tmp_path / "s.png"), min_w=400)
    assert plots._bar_label(0.002) == "1/500x" and plots._bar_label(3.0) == "3x"


def test_op_names_never_overprint(tmp_path):
    """Twelve ops crowded round one intensity: every name placed is clear of the others and
    of every marker, inside the axes, and the first op is named."""
    points = [{**_matmul_row(64, 64, 64), "op": f"op{i}", "intensity": 10.0 * 1.02 ** i,
               "tflops": 1.0 * 1.05 ** i} for i in range(12)]
    fig, ax = plots.subplots(figsize=(8, 5))
    ax.set_xscale("log")
    ax.set_yscale("log")
    for p in points:
        ax.plot([p["intensity"]], [p["tflops"]], marker="o", ms=9)
    ax.set_xlim(1, 100)
    ax.set_ylim(0.1, 10)
    colors = {p["op"]: "black" for p in points}
    placed = plots._label_ops(ax, fig, points, lambda p: p["op"], colors)
    assert "op0" in [t.get_text() for t in placed]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in placed]
    frame = ax.get_window_extent(renderer)
    for i, b in enumerate(boxes):
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
        assert not any(b.overlaps(other) for other in boxes[i + 1:])
        for p in points:
            x, y = ax.transData.transform((p["intensity"], p["tflops"]))
            assert not (b.x0 - 6 < x < b.x1 + 6 and b.y0 - 6 < y < b.y1 + 6)
