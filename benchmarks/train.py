"""Training speed: `python -m benchmarks.train --rows N` prints `name value unit` lines.

Generates about N order lines, featurizes them (DuckDB, as the featurize stage does), then times the
train stage's pure logic: the main LightGBM model alone (fit with early stopping + calibration) and the
whole `train_all` (main model, customer-blind model, logistic regression, predictions, threshold).
Wall and CPU seconds are both reported: the development machine is shared, and CPU time is the figure
other load disturbs least. Data building is not timed. `--features FILE` reuses a feature table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before LightGBM loads (see models/train.py)

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def build_features(rows: int, seed: int, folder: Path) -> Path:
    """Generated tables -> features.parquet in `folder` (not timed)."""
    from benchmarks.generate import sizes_for
    from features.build import featurize_to_parquet
    from pipeline.config import load_params
    from pipeline.generator import generate, write_generated

    data = generate(seed=seed, **sizes_for(rows))
    write_generated(data, folder / "raw", folder / "truth")
    from pipeline.commands.featurize import table_inputs

    params = load_params()
    out = folder / "features.parquet"
    featurize_to_parquet(
        table_inputs(folder / "raw"),
        data.meta["cutoff"],
        out,
        {
            "featurize": {**(params.get("featurize") or {}), "temp_directory": str(folder)},
            "labels": params["labels"],
        },
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="order lines to generate (approximate)")
    ap.add_argument("--repeat", type=int, default=1, help="timed training runs (medians reported)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--features", type=Path, help="reuse this features.parquet instead of generating")
    ap.add_argument("--main-only", action="store_true", help="time only the main model, not train_all")
    args = ap.parse_args(argv)

    import pandas as pd

    from models.train import SplitConfig, assign_splits, specs_from_registry, train_all, train_return_model
    from pipeline.config import load_params

    params = load_params()
    cfg, seed = params["train"], int(params["seed"])
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        t0 = time.perf_counter()
        ffile = args.features or build_features(args.rows, args.seed, Path(tmp))
        frame = pd.read_parquet(ffile)
        build_s = time.perf_counter() - t0
    specs = specs_from_registry(frame)
    split = assign_splits(
        frame["order_ts"], frame["label_mature"], SplitConfig.from_params(cfg.get("split", {}))
    )

    main_wall, main_cpu, all_wall, all_cpu = [], [], [], []
    fit = result = None
    for _ in range(args.repeat):
        w, c = time.perf_counter(), time.process_time()
        fit = train_return_model(frame, split, specs, cfg, seed)
        main_wall.append(time.perf_counter() - w)
        main_cpu.append(time.process_time() - c)
        if not args.main_only:
            w, c = time.perf_counter(), time.process_time()
            result = train_all(frame, specs, cfg, seed)
            all_wall.append(time.perf_counter() - w)
            all_cpu.append(time.process_time() - c)

    print(f"train_rows {len(frame)} lines")
    print(f"train_lines_in_training_window {int((split == 'train').sum())} lines")
    print(f"train_features {len(specs)} features")
    print(f"train_data_build_seconds {build_s:.1f} s")
    print(f"train_main_model_seconds {statistics.median(main_wall):.2f} s")
    print(f"train_main_model_cpu_seconds {statistics.median(main_cpu):.2f} s")
    print(f"train_best_iteration {fit.info['best_iteration']} trees")
    if all_wall:
        print(f"train_all_seconds {statistics.median(all_wall):.2f} s")
        print(f"train_all_cpu_seconds {statistics.median(all_cpu):.2f} s")
        print(f"train_test_auc {result.summary['test.model.roc_auc']:.4f} auc")
        print(f"train_logreg_seconds {result.summary['logreg_fit_seconds']:.2f} s")
    print(f"train_peak_rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB")


if __name__ == "__main__":
    main()
