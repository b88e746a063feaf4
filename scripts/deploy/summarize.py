"""Markdown summaries of issue 16's evidence runs, from their results files alone.

    python3 scripts/deploy/summarize.py window RUN        # each backend's window speedup
    python3 scripts/deploy/summarize.py paged RUN         # GB/s and % of the copy rate
    python3 scripts/deploy/summarize.py ragged RUN        # TFLOP/s and tokens/s of real work

Reads results.jsonl (and ceilings from meta.json, through the rows' pct_peak_bw); prints a
Markdown table. Rows that did not run say their status.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()
            if line.strip()]


def _cell(r: dict | None, field: str, fmt: str) -> str:
    if r is None:
        return ""
    if r["status"] != "ok" or r.get(field) is None:
        return r["status"]
    return format(r[field], fmt)


def window(rows: list[dict]) -> list[str]:
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    by = {(r["backend"], r["seq_len"], r["window"]): r for r in rows}
    lines = ["| N | backend | causal ms | window ms | speedup | causal TFLOP/s | window TFLOP/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n in sorted({r["seq_len"] for r in rows}):
        for b in backends:
            full = by.get((b, n, None))
            win = next((r for (bb, nn, w), r in by.items() if bb == b and nn == n and w), None)
            speed = ""
            if full and win and full["status"] == win["status"] == "ok":
                speed = f"{full['median_ms'] / win['median_ms']:.2f}×"
            lines.append(f"| {n} | {b} | {_cell(full, 'median_ms', '.3f')} | "
                         f"{_cell(win, 'median_ms', '.3f')} | {speed} | "
                         f"{_cell(full, 'tflops', '.0f')} | {_cell(win, 'tflops', '.0f')} |")
    return lines


def paged(rows: list[dict]) -> list[str]:
    lines = ["| heads | batch | cache | page | backend | ms | GB/s | % copy rate | ran |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pct = r.get("pct_peak_bw")
        lines.append(f"| {r['heads']}/{r['kv_heads']} | {r['batch']} | {r['kv_len']} | "
                     f"{r['page_size']} | {r['backend']} | {_cell(r, 'median_ms', '.4f')} | "
                     f"{_cell(r, 'gbps', '.0f')} | {'' if pct is None else f'{pct:.0f}%'} | "
                     f"{r.get('resolved_backend') or r.get('error') or ''} |")
    return lines


def ragged(rows: list[dict]) -> list[str]:
    lines = ["| lengths | sequences | tokens | backend | ms | TFLOP/s (real work) | Mtokens/s | ran |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        tps = r.get("tokens_per_s")
        lines.append(f"| {r['ragged']} | {r['batch']} | {r['tokens']} | {r['backend']} | "
                     f"{_cell(r, 'median_ms', '.3f')} | {_cell(r, 'tflops', '.0f')} | "
                     f"{'' if tps is None else f'{tps / 1e6:.1f}'} | "
                     f"{r.get('resolved_backend') or (r.get('error') or '')[:80]} |")
    return lines


if __name__ == "__main__":
    kind, run = sys.argv[1], Path(sys.argv[2])
    print("\n".join({"window": window, "paged": paged, "ragged": ragged}[kind](_rows(run))))
