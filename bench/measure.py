"""What every benchmark module shares: one measurement per subprocess, and its peak memory.

Each measurement runs in a fresh interpreter (``<script> --child <json spec>``), so the peak RSS it
reports is its own, not the parent's or an earlier measurement's.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def peak_mib() -> float:
    """Peak resident memory of this process in MiB: VmHWM where the kernel reports it.

    Not ru_maxrss when VmHWM is there: Linux carries ru_maxrss over fork and exec, so a child started by a
    parent that built a large template reported the parent's peak, not its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, spec: dict) -> dict:
    """Run ``script --child <spec>`` and return the JSON its last stdout line prints."""
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])
