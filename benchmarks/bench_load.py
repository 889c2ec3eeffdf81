"""Seconds to ``lightning_embed.load`` a checkpoint against its export, each in a fresh Python process.

Usage::

    python benchmarks/bench_load.py CHECKPOINT EXPORT_DIR [--repeats 3]

Each measurement starts a new interpreter that imports ``lightning_embed`` (not timed), then times the first
``load`` (which pays the imports the route needs: transformers' model classes, and for a checkpoint before
this fix Lightning) and a second ``load`` in the same process (warm). Prints one line per route and repeat.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = """
import json, sys, time
import lightning_embed
t0 = time.perf_counter(); lightning_embed.load(sys.argv[1], device="cpu"); t1 = time.perf_counter()
lightning_embed.load(sys.argv[1], device="cpu"); t2 = time.perf_counter()
print(json.dumps({"first_s": t1 - t0, "warm_s": t2 - t1, "lightning_imported": "lightning" in sys.modules}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("export")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from lightning_embed.training.precision import describe_hardware

    print(describe_hardware())
    for repeat in range(args.repeats):
        for route, path in (("export", args.export), ("checkpoint", args.checkpoint)):
            done = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"repeat {repeat + 1} {route:10s} first {result['first_s']:6.2f} s  warm {result['warm_s']:6.2f} s"
                  f"  lightning imported: {result['lightning_imported']}", flush=True)


if __name__ == "__main__":
    main()
