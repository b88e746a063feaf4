"""After README command 1 in a fresh clone: it printed a table and wrote a finished run of ok rows."""

import json
import sys
from pathlib import Path

clone = Path(sys.argv[1])
stdout = (clone / "main-job.stdout").read_text()
runs = [p for p in (clone / "results").iterdir() if (p / "meta.json").exists()]
assert len(runs) == 1, f"expected one run folder under {clone}/results, found {runs}"
meta = json.loads((runs[0] / "meta.json").read_text())
rows = [json.loads(line) for line in (runs[0] / "results.jsonl").read_text().splitlines()]
assert meta["status"] == "completed", meta["status"]
assert len(rows) == meta["n_cases"] > 0, (len(rows), meta["n_cases"])
bad = [(r["backend"], r["status"], r.get("error")) for r in rows if r["status"] != "ok"]
assert not bad, bad
assert "┃" in stdout and all(r["backend"] in stdout for r in rows), stdout
# The installed (not editable) package records the commit it was built from.
import subprocess  # noqa: E402

head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True,
                      text=True, check=True).stdout.strip()
recorded = meta["environment"]["git_commit"]
assert recorded == head, f"meta.json records git_commit {recorded!r}, the clone is at {head}"
print(f"README command 1: {len(rows)} ok rows in {runs[0]}, table printed")
