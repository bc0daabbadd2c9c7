"""Print what ``benchmarks/arm64/run.sh`` found: the ARM64 ``edgeres check`` line, and the ARM64
predictions against this machine's on the same photos (labels, score differences in uint8
steps of 1/256).

    python benchmarks/arm64/compare.py CHECK.json PREDICT_X86.jsonl PREDICT_ARM.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _predictions(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {Path(r["path"]).name: r for r in rows}


def main(check_file: str, x86_file: str, arm_file: str) -> int:
    check = json.loads(Path(check_file).read_text())
    print(f"arm64: {check['line']}")
    for name, c in check["against"].items():
        print(f"arm64:   vs {name}: {c['differ']}/{check['probes']} probes differ, max {c['max_steps']} steps, "
              f"mean {c['mean_steps']:.2f}, {c['flips']} top-1 flips")
    x86, arm = _predictions(Path(x86_file)), _predictions(Path(arm_file))
    if set(x86) != set(arm) or not x86:
        print(f"arm64: predictions cover different photos (x86 {len(x86)}, aarch64 {len(arm)})")
        return 1
    steps = {p: round(abs(x86[p]["score"] - arm[p]["score"]) * 256) for p in x86}
    flips = sorted(p for p in x86 if x86[p]["label"] != arm[p]["label"])
    differ = sum(1 for s in steps.values() if s)
    print(f"arm64: predict on {len(x86)} photos, aarch64 vs x86_64 (both XNNPACK): {differ} scores differ, "
          f"max {max(steps.values())} steps, {len(flips)} label flips" + (f" ({', '.join(flips)})" if flips else ""))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
