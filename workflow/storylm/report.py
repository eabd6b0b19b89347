"""The report step: gather the run's results under results/ (samples, metrics, loss curve)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hashes", required=True, help="JSON of every stage's hash")
    parser.add_argument("--samples-dir", type=Path, required=True)
    parser.add_argument("--evaluate-dir", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True, help="where to write samples.txt")
    parser.add_argument("--metrics", type=Path, required=True, help="where to write metrics.json")
    parser.add_argument("--plot", type=Path, required=True, help="where to write the loss curve PNG")
    args = parser.parse_args(argv)
    metrics = {
        "stage_hashes": json.loads(args.hashes),
        **json.loads((args.evaluate_dir / "metrics.json").read_text()),
        "sample_consistency": json.loads((args.samples_dir / "consistency.json").read_text()),
    }
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.copyfile(args.samples_dir / "samples.txt", args.samples)
    shutil.copyfile(args.evaluate_dir / "loss.png", args.plot)


if __name__ == "__main__":
    main()
