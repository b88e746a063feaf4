"""What a user sees in a terminal: tables that fit 80, 120 and 200 columns whole, help with its
defaults, usage, version and progress lines; checked in Rich consoles and in a real pty."""

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from rich.console import Console

from flashbench.results.check import run_check
from flashbench.results.compare import compare_backends, compare_runs
from flashbench.output.fit import Column, Grid, fit, long_layout
from flashbench.results.reading import read_rows
from flashbench.output.formats import milliseconds as format_ms
from flashbench.output.tables import backends_display, runs_display, sweep_table, to_grid

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "h100-default"
FLASHBENCH = str(Path(sys.executable).parent / "flashbench")  # the installed console script
WIDTHS = (80, 120, 200)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _shown(grid, width):
    console = Console(width=width, force_terminal=True, record=True, color_system=None)
    tables = fit(grid, console)
    for t in tables:
        console.print(t)
    return console.export_text(), tables


def _lines_fit(text, width):
    return all(len(line.rstrip()) <= width for line in text.splitlines())


@pytest.fixture(scope="module")
def default_rows():
    """A real GPU sweep: 7 backends, 16 shapes, memory column and telemetry marks."""
    return read_rows(REFERENCE)


@pytest.mark.parametrize("width", WIDTHS)
def test_sweep_table_of_seven_backends_fits_every_width_whole(default_rows, width):
    text, tables = _shown(sweep_table(default_rows, title="flashbench default"), width)
    assert "…" not in text and _lines_fit(text, width)
    for r in default_rows:  # every median, whole, with its marks stripped
        if r["status"] in ("ok", "mismatch"):
            assert format_ms(r["median_ms"]) in text, r["backend"]
    for b in {r["backend"] for r in default_rows}:
        assert b in text
    assert "mem: peak allocated" in text  # a GPU run has the memory column, and says so


def test_wide_terminal_shows_one_table_narrow_ones_split_or_go_long(default_rows):
    grid = sweep_table(default_rows)
    assert len(_shown(grid, 100_000)[1]) == 1
    _, at_80 = _shown(grid, 80)
    # Seven backends of four numbers cannot sit two to a block in 80 columns: one row per
    # case and backend instead, in a single table, the shape in one column.
    assert len(at_80) == 1
    assert [c.header for c in at_80[0].columns][:2] == ["seq_len head_dim causal", "backend"]
    _, at_200 = _shown(grid, 200)  # at 200: blocks of backends side by side
    assert len(at_200) >= 2 and at_200[0].columns[0].header == "seq_len"


def test_blocks_repeat_the_case_columns_and_keep_every_backend():
    grid = Grid("t", [Column("seq_len", ["1024", "2048"])],
                [(f"backend{i}", [Column("ms", ["0.123", "4.567"]),
                                  Column("TFLOP/s", ["612", "45.3"])]) for i in range(4)])
    text, tables = _shown(grid, 70)
    assert len(tables) == 2 and "part 2 of 2" in text
    for t in tables:
        assert t.columns[0].header == "seq_len"
    assert all(f"backend{i}" in text for i in range(4)) and "…" not in text


def test_long_layout_keeps_cases_and_drops_empty_cells():
    grid = Grid("t", [Column("N", ["1", "2"])],
                [("a", [Column("ms", ["0.1", ""])]), ("b", [Column("ms", ["0.2", "0.3"])])])
    long = long_layout(grid)
    assert [c.header for c in long.keys] == ["N", "backend"]
    assert long.keys[0].cells == ["1", "1", "2"] and long.keys[1].cells == ["a", "b", "b"]
    assert long.groups[0][1][0].cells == ["0.1", "0.2", "0.3"]
    assert long.breaks == {1}  # a rule between the cases
    mixed = Grid("t", [Column("N", ["1"])], [("a", [Column("ms", ["1"])]),
                                             ("b", [Column("GB/s", ["2"])])])
    assert long_layout(mixed) is None


def test_piped_output_is_one_table_as_wide_as_it_needs(default_rows):
    console = Console(width=100_000, file=open(os.devnull, "w"))
    assert not console.is_terminal
    assert len(fit(sweep_table(default_rows), console)) == 1


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_of_five_backends_and_check_fit_whole(default_rows, width):
    five = [r for r in default_rows if r["backend"] in
            ("triton", "sdpa", "sdpa-flash", "sdpa-cudnn", "naive")]
    display = backends_display(compare_backends(five))
    text, _ = _shown(to_grid(display, "compare", by_backend=True),
                     width)
    assert "…" not in text and _lines_fit(text, width)
    for col in display.columns:
        for cell in display[col]:
            assert str(cell) in text
    slower = [dict(r, samples_ms=[s * 1.3 for s in r["samples_ms"]]) if r["backend"] == "naive"
              else r for r in five]
    runs = runs_display(compare_runs(five, slower))
    text, _ = _shown(to_grid(runs, "check"), width)
    assert "…" not in text and _lines_fit(text, width)
    assert text.count("regression") >= sum(r["backend"] == "naive" and r["status"] == "ok"
                                           for r in five)
    for cell in runs["ratio [99% CI]"]:
        assert cell in text


def test_legend_names_only_the_marks_the_table_shows(default_rows):
    cpu_like = [dict(r, peak_alloc_bytes=None, sm_clock_mhz=None, throttle=None)
                for r in default_rows]
    caption = sweep_table(cpu_like).caption
    assert "mem" not in caption and "throttled" not in caption and "* fastest" in caption
    one_backend = [r for r in default_rows if r["backend"] == "naive"]
    assert "fastest" not in sweep_table(one_backend).caption  # no choice, no mark


# --- in a real pseudo-terminal --------------------------------------------------------------

def _in_pty(args, cols, cwd=None, timeout=180):
    """Run the installed flashbench in a pty of ``cols`` columns; its output, and exit code."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([FLASHBENCH, *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError("no output for too long")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "")
    return text, proc.wait()


def _stdout_tables(text):
    """The table lines (progress lines redraw in place and end with a carriage return)."""
    return "\n".join(line for line in text.splitlines() if line[:1] in "┏┃┡│├└")


@pytest.fixture(scope="module")
def five_backend_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pty-runs")
    text, code = _in_pty(["run", "--config", "cpu", "--seq-len", "32",
                          "--backends", "triton,sdpa,sdpa-flash,sdpa-math,naive",
                          "--out", out], 80)
    assert code == 0, text
    (run,) = out.iterdir()
    return run, text


def test_run_compare_and_check_in_an_80_column_pty(five_backend_run):
    run, text = five_backend_run
    rows = read_rows(run)
    assert len(rows) == 10 and {r["status"] for r in rows} == {"ok"}
    tables = _stdout_tables(text)
    assert tables and "…" not in tables
    assert all(len(line) <= 80 for line in tables.splitlines())
    for r in rows:
        assert format_ms(r["median_ms"]) in tables
    text, code = _in_pty(["compare", run], 80)
    assert code == 0 and "…" not in text and all(len(x) <= 80 for x in text.splitlines())
    for b in ("triton", "sdpa-flash", "sdpa-math", "naive"):
        assert b in text
    text, code = _in_pty(["check", run, run], 80)
    assert code == 0 and "no regression" in text and "…" not in text
    assert run_check(str(run), str(run), root=run.parent).passed


def test_help_shows_defaults_in_a_terminal():
    for command in ("run", "profile", "compare", "report"):
        text, code = _in_pty([command, "--help"], 80)
        assert code == 0 and "[default:" in text, command
    text, _ = _in_pty(["run", "--help"], 80)
    assert "[default: the query length]" in text.replace("\n", " ").replace("  ", " ") or \
        "the query length]" in text


def test_bare_command_prints_usage_and_version_exits_0():
    out = subprocess.run([FLASHBENCH], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: flashbench" in out.stdout and "run" in out.stdout
    out = subprocess.run([FLASHBENCH, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and re.fullmatch(r"flashbench \d+\.\d+\.\d+\S*\n", out.stdout)


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    out = subprocess.run([FLASHBENCH, "run", "--config", "cpu", "--seq-len", "16",
                          "--backends", "sdpa,naive", "--no-causal", "--out", tmp_path],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.startswith("[")]
    assert len(lines) == 2
    assert re.match(r"\[1/2\]\s+[\d.]+ s  ok\s+[\d.e-]+ ms  sdpa fwd B1 H4/2 N16 D64 fp32$",
                    lines[0]), lines[0]
    assert "naive" in lines[1] and "[2/2]" in lines[1]
    assert "[1/2]" not in out.stdout  # progress never reaches the data


def test_worker_starts_from_a_folder_that_shadows_the_package(tmp_path):
    """README command 1 runs from the checkout's root, where ./flashbench is the source folder;
    the worker must import the installed package, not whatever the current folder holds."""
    (tmp_path / "flashbench").mkdir()
    (tmp_path / "flashbench" / "__init__.py").write_text("raise ImportError('shadowed')\n")
    out = subprocess.run([FLASHBENCH, "run", "--config", "cpu", "--seq-len", "16",
                          "--backends", "naive", "--no-causal", "--out", tmp_path / "r"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "r").iterdir()
    assert [r["status"] for r in read_rows(run)] == ["ok"]
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"
