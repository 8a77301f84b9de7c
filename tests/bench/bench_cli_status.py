"""Wall time of ``meshtui status --json`` against a local agent, beside ``python -c pass``.

Target (issue 2): status ≤ 150 ms.  Run: ``python tests/bench/bench_cli_status.py [runs]``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)

from meshtui.demo import LocalMesh


def timed(argv: list[str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    meshtui = str(Path(sys.executable).with_name("meshtui"))
    with tempfile.TemporaryDirectory() as tmp:
        mesh = LocalMesh(1, base_dir=Path(tmp))
        mesh.start()
        try:
            assert mesh.wait_ready(20)
            sock = mesh.nodes[0].socket_path
            timed([meshtui, "status", "--json", "-t", sock], 3)  # warm the page cache
            status = timed([meshtui, "status", "--json", "-t", sock], runs)
            bare = timed([sys.executable, "-c", "pass"], runs)
        finally:
            mesh.stop()
    med_s, med_b = statistics.median(status), statistics.median(bare)
    print(f"meshtui status --json: median {med_s * 1000:.1f} ms, "
          f"p90 {sorted(status)[int(0.9 * runs) - 1] * 1000:.1f} ms over {runs} runs (target <= 150 ms)")
    print(f"python -c pass:        median {med_b * 1000:.1f} ms (same run)")
    print(f"status costs {med_s - med_b:.3f} s above the interpreter start")


if __name__ == "__main__":
    main()
