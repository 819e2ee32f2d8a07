"""Compare ``wslog analyze`` at two commits on the same input, interleaved in one run.

    python bench/compare.py BASE [--rounds 3] [--data bench/out/data-1000000]

Checks BASE out into a temporary git worktree, then runs ``python -m wslog analyze DATA`` from
that tree and from this one by turns (``--rounds`` each), every run a child process measured
for wall time and peak RSS (its own rusage, via wait4), and prints the median of each and their
ratio (this tree / BASE). The two reports must be equal apart from their timing line: a speed-up
that changes the answer is a bug. Make the corpus first with ``bench/generate.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(tree: Path, data: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``wslog analyze DATA`` run from ``tree``."""
    start = time.perf_counter()
    with out.open("wb") as stdout:
        # From the tree's own directory, so that Python imports that tree's packages.
        proc = subprocess.Popen(
            [sys.executable, "-m", "wslog", "analyze", str(data)], cwd=tree, stdout=stdout
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"wslog analyze from {tree} failed: {status}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def report_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if "elapsed" not in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the commit to compare with (e.g. HEAD~5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "data-1000000")
    args = parser.parse_args()
    data = args.data.resolve()
    if not data.exists():
        raise SystemExit(f"no {data}: run python bench/generate.py --out {data} first")
    with tempfile.TemporaryDirectory(prefix="wslog-base-") as scratch:
        base = Path(scratch) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base],
            check=True,
        )
        try:
            figures: dict[str, list[tuple[float, float]]] = {"base": [], "this": []}
            for _ in range(args.rounds):
                for name, tree in (("base", base), ("this", ROOT)):
                    figures[name].append(run(tree, data, Path(scratch) / f"{name}.txt"))
            same = report_lines(Path(scratch) / "base.txt") == report_lines(
                Path(scratch) / "this.txt"
            )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
    wall = {k: statistics.median(w for w, _ in v) for k, v in figures.items()}
    rss = {k: statistics.median(r for _, r in v) for k, v in figures.items()}
    print(f"{'tree':6} {'wall s':>8} {'peak MiB':>9}   (median of {args.rounds})")
    for name in figures:
        print(f"{name:6} {wall[name]:8.2f} {rss[name]:9.0f}")
    print(f"ratio  {wall['this'] / wall['base']:8.2f} {rss['this'] / rss['base']:9.2f}")
    print("reports equal" if same else "REPORTS DIFFER")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
