"""PTQ vs QAT from two export bundles' edgeres.json: the rows of benchmarks/qat.md.

    edgeres export RUN --int8 --out export/ptq --data D --no-layer-report
    edgeres qat RUN --out runs/qat --data D && edgeres export runs/qat --int8 --out export/qat --data D
    python benchmarks/qat_table.py export/ptq export/qat

PTQ's int8 is compared with RUN's float32 model through LiteRT (the export's verification); QAT's
int8 with the QAT model's own forward pass and with RUN's float32 model in TensorFlow (the export's
"qat" record). Both on the same validation photos, with RUN's resize rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ptq", type=Path, help="bundle of `edgeres export RUN --int8`")
    parser.add_argument("qat", type=Path, help="bundle of `edgeres export QAT_RUN --int8`")
    args = parser.parse_args()
    ptq = json.loads((args.ptq / "edgeres.json").read_text())
    qat = json.loads((args.qat / "edgeres.json").read_text())
    v, q = ptq["verification"], qat["qat"]
    parent = q["vs_parent_float32"]
    print(f"photos: PTQ n={v['n']}, QAT n={q['n']}; QAT run: {q['target']}, "
          f"lr {qat['run']['train']['learning_rate']:g}, {qat['run']['train']['epochs']} epoch(s)")
    print("| model | accuracy | int8 vs QAT forward: agree / mean \\|dp\\| / p99 \\|dp\\| "
          "| int8 vs original float32: agree / mean \\|dp\\| / p99 \\|dp\\| |")
    print("| --- | --- | --- | --- |")
    print(f"| original float32 | {v['float32']['accuracy']:.1%} (TF: {parent['accuracy']:.1%}) | — | — |")
    print(f"| PTQ int8 (`edgeres export`, {ptq['calibration']['ranges']}) | {v['int8']['accuracy']:.1%} | — "
          f"| {v['agreement']:.1%} / {v['mean_abs_prob_diff']:.4f} / {v['p99_abs_prob_diff']:.4f} |")
    f = q["vs_qat_forward"]
    print(f"| QAT forward (fake quant, TF) | {f['accuracy']:.1%} | — | — |")
    print(f"| QAT int8 | {q['int8_accuracy']:.1%} | {f['agreement']:.1%} / {f['mean_abs_prob_diff']:.4f} / "
          f"{f['p99_abs_prob_diff']:.4f} | {parent['agreement']:.1%} / {parent['mean_abs_prob_diff']:.4f} / "
          f"{parent['p99_abs_prob_diff']:.4f} |")
    print(f"QAT float32 (its weights, no fake quant) accuracy {qat['verification']['float32']['accuracy']:.1%}; "
          f"export seconds PTQ {ptq['seconds']}, QAT {qat['seconds']}")


if __name__ == "__main__":
    main()
