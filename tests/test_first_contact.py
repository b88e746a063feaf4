"""What a new user meets first: renamed presets, a warning before hours under Triton's CPU
interpreter, and an HTML report that leads with the answer and works without matplotlib."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashbench.core.cases import Case, Mode
from flashbench.cli import app
from flashbench.core.config import list_presets, load_config
from flashbench.output.report import headline_table, render_report
from flashbench.results.compare import compare_backends
from flashbench.sweep.schedule import interpreter_call_seconds, interpreter_warning
from flashbench.results.reading import read_meta, read_rows

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "h100-default"
FLASHBENCH = str(Path(sys.executable).parent / "flashbench")
runner = CliRunner()


def test_presets_are_named_for_what_they_are_and_old_names_still_load(capsys):
    assert set(list_presets()) == {"cpu", "decode", "default", "prefill", "quick", "train",
                                   "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mistral-7b",
                                   "gemma-2-9b", "phi-3-mini"}
    cfg = load_config("h100-prefill")
    assert cfg.name == "prefill"
    assert "preset 'h100-prefill' is now called 'prefill'" in capsys.readouterr().err
    assert load_config("h100-train").mode == [Mode.FWD_BWD, Mode.BWD]


def test_shipped_presets_point_at_nothing_a_user_does_not_have():
    folder = Path(__file__).resolve().parent.parent / "configs"
    for path in folder.glob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"shared/|issue \d|\.md\b|h100", text, re.I), path.name


def _case(n, d=128, batch=4, heads=16):
    return Case("triton", Mode.FWD, batch, heads, heads, n, n, d, "bf16", False)


def test_interpreter_estimate_scales_with_the_work():
    small, large = interpreter_call_seconds(_case(128, 64, 1, 4)), interpreter_call_seconds(_case(4096))
    assert 0.05 < small < 2  # about 0.3 s a call, measured at 0.1-0.5 s on a 2-core VM
    assert large > 3600  # profile's GPU default shape: hours a call
    assert interpreter_warning([_case(128, 64, 1, 4)] * 8) is None  # the cpu preset: quiet
    note = interpreter_warning([_case(4096)])
    assert note.startswith("warning: 1 case(s) run under Triton's CPU interpreter, about ")
    assert "triton fwd B4 H16 N4096 D128 bf16: about" in note and " h a call" in note


def test_run_warns_before_it_starts_interpreter_work_that_cannot_finish(tmp_path):
    # head_dim 80 is refused by the kernel, so the case is over at once; the estimate comes first.
    out = subprocess.run([FLASHBENCH, "run", "--config", "cpu", "--backends", "triton",
                          "--seq-len", "8192", "--head-dim", "80", "--batch", "1", "--heads", "1",
                          "--kv-heads", "1", "--no-causal", "--out", tmp_path],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    warning = next(i for i, x in enumerate(lines) if "Triton's CPU interpreter" in x)
    first_case = next(i for i, x in enumerate(lines) if x.startswith("[1/1]"))
    assert warning < first_case
    assert "unsupported" in lines[first_case]


def test_profile_warns_on_a_cpu_with_its_gpu_defaults(tmp_path):
    # Refused at once (head_dim 80), so only the warning costs anything.
    result = runner.invoke(app, ["profile", "--device", "cpu", "--backends", "triton",
                                 "--head-dim", "80", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert re.search(r"Triton's CPU interpreter, about [\d.]+ h in all .* about [\d.]+ (min|h) a call",
                     result.stderr)


@pytest.fixture(scope="module")
def reference():
    return read_rows(REFERENCE), read_meta(REFERENCE)


def test_headline_names_the_fastest_per_shape_and_its_lead(reference):
    rows, _ = reference
    table = headline_table(compare_backends(rows))
    assert len(table) == 16  # every shape of the default sweep
    line = table[(table["seq_len"] == "8192") & (table["head_dim"] == "128")
                 & (table["causal"] == "causal")].iloc[0]
    times = {r["backend"]: r["median_ms"] for r in rows if r["seq_len"] == 8192
             and r["head_dim"] == 128 and r["causal"] and r["status"] == "ok"}
    best, second = sorted(times.values())[:2]
    assert line["fastest"] == min(times, key=times.get)
    assert line["next / fastest"] == f"{second / best:.2f}×"


def test_html_page_reads_headline_tables_plots_then_environment(reference, tmp_path):
    rows, meta = reference
    page, _ = render_report(rows, meta, "html")
    order = [page.index(marker) for marker in (
        "<h2>Who is fastest</h2>", "headline", "<h2>Each case, backends side by side</h2>",
        "<h2>Plots</h2>", "<summary>Every row", "<h2>Environment</h2>")]
    assert order == sorted(order)
    assert page.count('src="data:image/png;base64,') == 5  # headline + 4 plots


def test_html_page_without_matplotlib_keeps_its_tables_and_says_how_to_get_plots(tmp_path):
    # A fresh interpreter in which matplotlib cannot be imported.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ImportError('no matplotlib here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib.util\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'matplotlib' else None\n"
        "from flashbench.cli import app\n"
        f"sys.argv = ['flashbench', 'report', {str(REFERENCE)!r}, '--format', 'html', "
        f"'-o', {str(tmp_path / 'page.html')!r}]\n"
        "app()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "page.html").read_text()
    assert "<h2>Who is fastest</h2>" in page and "<h2>Each case, backends side by side</h2>" in page
    assert 'src="data:image/png;base64,' not in page
    assert 'pip install matplotlib (or, in the flashbench checkout, pip install ".[plot]")' \
        in page.replace("&quot;", '"')
    assert "no plots" in out.stderr and "pip install matplotlib" in out.stderr
    # --plot asks for plots outright: without matplotlib that is bad input, exit 2.
    code = code.replace("'-o', ", f"'--plot', {str(tmp_path / 'p')!r}, '-o', ")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2 and "plots need matplotlib" in out.stderr
