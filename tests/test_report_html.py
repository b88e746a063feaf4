"""Plots and the HTML page: real PNGs, a self-contained page, what a headless browser renders."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from flashbench.output.html import render_html
from flashbench.output.plots import make_plots
from flashbench.results.reading import read_meta, read_rows
from flashbench.output.tables import results_frame

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "h100-default"
SECTION_COLUMNS = ["backend", "seq_len", "head_dim", "causal", "median_ms", "tflops", "gbps",
                   "peak_alloc_bytes"]
DATA_PNG = 'src="data:image/png;base64,'


def _row(backend, seq_len, kv_len, head_dim, causal, *, peak, median_ms, status="ok"):
    flops = 4 * 8 * head_dim * seq_len * kv_len // (2 if causal else 1)
    hbm = 2 * 8 * head_dim * (2 * seq_len + 2 * kv_len)
    timed = median_ms is not None
    return {"backend": backend, "mode": "fwd", "batch": 1, "heads": 8, "kv_heads": 8,
            "seq_len": seq_len, "kv_len": kv_len, "head_dim": head_dim, "dtype": "bf16",
            "causal": causal, "status": status, "median_ms": median_ms,
            "tflops": flops / median_ms / 1e9 if timed else None,
            "gbps": hbm / median_ms / 1e6 if timed else None,
            "flops": flops, "hbm_bytes": hbm, "peak_alloc_bytes": peak}


def synthetic_rows(*, gpu=True, decode=True):
    """naive (quadratic memory) and triton (linear), 3 lengths x 2 head dims x causal, + decode."""
    rows = []
    for n in (1024, 2048, 4096):
        for d in (64, 128):
            for causal in (False, True):
                rows.append(_row("naive", n, n, d, causal, median_ms=1e-6 * n * n,
                                 peak=8 * 8 * n * n if gpu else None))
                rows.append(_row("triton", n, n, d, causal, median_ms=2e-7 * n * n,
                                 peak=2 * 8 * n * d + 4 * 8 * n if gpu else None))
    # A case that did not run: no median, so it must not reach any plot.
    rows.append(_row("naive", 8192, 8192, 128, False, median_ms=None, peak=None, status="oom"))
    if decode:
        for kv in (2048, 4096, 8192):
            for backend, speed in (("naive", 0.2), ("triton", 1.0)):
                rows.append(_row(backend, 1, kv, 128, False, median_ms=1e-5 * kv / speed,
                                 peak=8 * kv if gpu else None))
    return rows


def _distinct_colours(image):
    rgb = (image[..., :3] * 255).round().astype(np.uint32)
    # One integer per colour: np.unique over rows of pixels is far slower.
    return len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))


def _assert_real_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 300 and image.shape[1] >= 500
    assert _distinct_colours(image) > 50  # lines, antialiased text: not a blank canvas


def test_gpu_run_gets_all_five_plots(tmp_path):
    frame = results_frame(synthetic_rows())
    written = make_plots(frame, tmp_path / "plots", "Test GPU",
                         {"matmul_tflops": {"bf16": 800.0}, "copy_gbps": 3000.0})
    assert [p.name for p in written] == ["headline.png", "latency.png", "tflops.png",
                                         "memory.png", "decode.png", "roofline.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written)
    for path in written:
        _assert_real_png(path)


def test_cpu_run_gets_no_memory_or_decode_plot(tmp_path):
    frame = results_frame(synthetic_rows(gpu=False, decode=False))
    assert frame["peak_alloc_bytes"].isna().all()
    written = make_plots(frame, tmp_path, "CPU")
    assert [p.name for p in written] == ["headline.png", "latency.png", "tflops.png",
                                         "roofline.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["headline.png", "latency.png",
                                                          "roofline.png", "tflops.png"]
    for path in written:
        _assert_real_png(path)


def test_nothing_timed_writes_nothing(tmp_path):
    frame = results_frame([_row("naive", 64, 64, 64, False, median_ms=None, peak=None,
                                status="error")])
    assert make_plots(frame, tmp_path / "plots", "CPU") == []


def test_modules_keep_matplotlib_out_of_the_cli_and_the_html_page():
    code = ("import sys; import flashbench.cli, flashbench.output.html; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cells_are_escaped_and_numbers_formatted():
    meta = {"run_id": "r<1>", "environment": {"device": "cpu", "cudnn": 91900,
                                               "gpu_memory_bytes": 85017493504}}
    frame = pd.DataFrame({"backend": ["<script>alert(1)</script>", "b&c"],
                          "median_ms": [0.098768, float("nan")], "tflops": [347.88, 612.4],
                          "gbps": [2579.3, 1.23e-5], "seq_len": [8192, 16384]})
    page = render_html(meta, [("Results <all>", frame)], [])
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "b&amp;c" in page and "r&lt;1&gt;" in page and "Results &lt;all&gt;" in page
    assert "<h1>flashbench r&lt;1&gt;</h1>" in page and "CPU" in page
    cells = re.findall(r'<td class="num">([^<]*)</td>', page)
    assert cells == ["0.0988", "348", "2,579", "8,192", "612", "1.23e-05", "16,384"]
    assert '<td></td>' in page  # NaN: an empty cell, not "nan"
    assert "91900" in page and "85,017,493,504 (79.2 GiB)" in page  # a version is not grouped


@pytest.fixture(scope="module")
def reference_page(tmp_path_factory):
    """The committed H100 run with its plots: (meta, frame, images)."""
    meta = read_meta(REFERENCE)
    frame = results_frame(read_rows(REFERENCE))
    images = make_plots(frame, tmp_path_factory.mktemp("plots"),
                        meta["environment"]["gpu_name"])
    return meta, frame, images


def _self_contained(page, n_images):
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "<script" not in page.lower()
    assert page.count("<table") >= 2  # the environment and the section
    assert page.count(DATA_PNG) == n_images


def test_reference_run_page_is_self_contained(reference_page):
    meta, frame, images = reference_page
    assert [p.name for p in images] == ["headline.png", "latency.png", "tflops.png", "memory.png",
                                        "roofline.png"]
    page = render_html(meta, [("Results", frame[SECTION_COLUMNS])], images)
    _self_contained(page, len(images))
    assert "NVIDIA H100 80GB HBM3" in page and meta["run_id"] in page
    assert page.count("<tr>") >= len(frame) + 1
    for key in ("started", "finished", "status", "command", "driver", "torch"):
        assert f"<th>{key}</th>" in page


def _chromium(browser, tmp_path, *args):
    # A fresh profile and nothing that phones home: the page must render from the file alone.
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=60)


def test_headless_browser_renders_the_page(reference_page, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed: no headless browser to render the page")
    meta, frame, images = reference_page
    # A short section, so that the first plot falls inside the 2000-pixel-high screenshot.
    section = frame[(frame["seq_len"] == 8192) & (frame["head_dim"] == 128) & frame["causal"]]
    page = tmp_path / "report.html"
    page.write_text(render_html(meta, [("Results", section[SECTION_COLUMNS])], images))
    url = page.resolve().as_uri()

    dom = _chromium(browser, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    _self_contained(dom.stdout, len(images))
    assert "NVIDIA H100 80GB HBM3" in dom.stdout

    shot = tmp_path / "screenshot.png"
    result = _chromium(browser, tmp_path, f"--screenshot={shot}", "--window-size=1400,2000", url)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    image = imread(shot)[..., :3]
    assert image.shape[:2] == (2000, 1400)
    assert _distinct_colours(image) > 200
    lower = image[image.shape[0] // 2:]
    assert (lower.min(axis=2) < 0.9).mean() > 0.01  # not a white lower half
    # The plots' line colours are the only saturated pixels on the page: images rendered.
    saturation = lower.max(axis=2) - lower.min(axis=2)
    assert (saturation > 0.4).sum() > 500
