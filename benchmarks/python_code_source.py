"""Mining and cached-load time of ``builtin:python-code``, with its counts per package and fingerprint.

Mines into a fresh cache folder (so the first load really mines), then loads from the cache ``--repeats``
times in fresh processes (the in-process memo would make a second load in one process free), and prints a
report fit for ``benchmarks/results/``:

    python benchmarks/python_code_source.py > benchmarks/results/python-code-source-cpu-DATE.txt
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

# lightning_embed.models.backbones (torch, transformers) is imported first, as it is in any fit: its import is not the
# source's cost.
_LOAD = ("import time; import lightning_embed.models.backbones; from lightning_embed import python_code_source as s; "
         "t = time.perf_counter(); s.load('train'); s.load('val'); print(time.perf_counter() - t)")


def _cpu() -> str:
    fields = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    return f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family')} model {fields.get('model')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time (fresh processes)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LIGHTNING_EMBED_CACHE"] = cache
        from lightning_embed.data import python_code_source as source

        start = time.perf_counter()
        pairs, meta = source.load_with_metadata()
        first = time.perf_counter() - start
        loads = [float(subprocess.run([sys.executable, "-c", _LOAD], capture_output=True, text=True, check=True,
                                      env=os.environ).stdout) for _ in range(args.repeats)]
    print(f"command: python benchmarks/python_code_source.py --repeats {args.repeats}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"cpu: {_cpu()}, {os.cpu_count()} logical cores shared with other jobs (1-min load average "
          f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")
    print(f"python: {platform.python_version()}")
    print(f"pairs: train {meta['counts']['train']}, val {meta['counts']['val']} (held-out packages: "
          f"{', '.join(meta['held_out'])}; val capped at {meta['val_size']})")
    print(f"fingerprint: train {meta['fingerprint']['train']}, val {meta['fingerprint']['val']}")
    print(f"mining (first use, parse + dedup + write cache): {meta['mining_seconds']:.1f} s; "
          f"whole first load {first:.1f} s")
    print("cached load (load('train') + load('val'), fresh process, torch already imported), s: "
          + ", ".join(f"{t:.2f}" for t in loads))
    print("pairs per package (split):")
    counts = collections.Counter((p["package"], p["split"]) for p in pairs)
    for (package, split), n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {package:<22} {split:<5} {n:>6}  {meta['versions'].get(package, '')}")


if __name__ == "__main__":
    main()
