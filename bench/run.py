"""Entry point for ``make bench``: runs every benchmark module in bench/ and prints its figures.

A benchmark module is a ``bench/*_bench.py`` file with ``main(argv) -> int`` (0 = ran and
checked out). Flags are passed through to every module (each ignores what it does not know):

    --events N    events to generate (default 10,000,000)
    --quick       1,000,000 events
    --repeats K   runs per measurement, the median is quoted (default 3)
    --only NAME   run only the benchmark modules whose name contains NAME
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bench", default="", help="run only benchmark modules whose name contains this")
    args, rest = ap.parse_known_args(argv)
    passthrough = ["--events", str(1_000_000 if args.quick else args.events), "--repeats", str(args.repeats), *rest]
    sys.path.insert(0, str(HERE))
    modules = sorted(p.stem for p in HERE.glob("*_bench.py") if args.bench in p.stem)
    if not modules:
        print("no benchmark modules found", file=sys.stderr)
        return 2
    failed = []
    for name in modules:
        t = time.perf_counter()
        print(f"### {name} {' '.join(passthrough)}", flush=True)
        rc = importlib.import_module(name).main(passthrough)
        print(
            f"### {name}: {'ok' if rc == 0 else f'FAILED (rc={rc})'} in {time.perf_counter() - t:,.0f} s\n", flush=True
        )
        if rc:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
