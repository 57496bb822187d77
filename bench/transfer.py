"""The transfer experiment's record (issue 17): FVD / FID / LPIPS of an export of ``pipelines/transfer.py``.

Runs on the host where the metric networks are cached (``python -m v2w_core.eval.weights status``): reads
the export a GPU run sent back, computes the metrics of every run and of the copy-last-frame and untrained
baselines (:mod:`pipelines.transfer_report`; each run's numbers cached under ``--cache``, so a stopped
report resumes), appends one record with a ``headline`` to ``bench/results/transfer.json`` and writes
``docs/experiments/transfer.md`` with its figures.

    python bench/transfer.py /path/to/export                       # all metrics (FVD, FID, LPIPS)
    python bench/transfer.py /path/to/export --metrics fvd,lpips   # skip FID (the slowest on a CPU)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._record import append_record, machine_info, machine_summary, new_record

RESULTS = ROOT / "bench" / "results" / "transfer.json"
DOCS = ROOT / "docs" / "experiments"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export", help="the export directory of a pipelines/transfer.py run")
    p.add_argument("--metrics", default="fvd,fid,lpips", help="comma list of fvd,fid,lpips ('none': PSNR only)")
    p.add_argument("--weights", action="append", default=[],
                   help="metric=path of a metric network's safetensors (default: the converted cache)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "vid2world" / "transfer-metrics"),
                   help="per-run metric cache, keyed by the rollouts' content (the export may be read-only)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--docs", default=str(DOCS), help="where transfer.md and its figures go")
    p.add_argument("--gpu-command", default=None, help="the GPU command line, for the write-up")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipelines.transfer_report import METRICS, Export, compute_all, headline, write_docs

    metrics = tuple(m for m in args.metrics.split(",") if m in METRICS)
    weights = dict(w.split("=", 1) for w in args.weights)
    export = Export(args.export)
    cache = Path(args.cache)
    computed = compute_all(export, metrics=metrics, weights=weights, cache=cache)
    machine = machine_info()
    record = new_record("transfer", machine=machine, export=str(Path(args.export).resolve()), metrics=list(metrics),
                        gpu_run={k: export.results.get(k) for k in ("device", "gpu_seconds", "timings", "parallel",
                                                                    "failures", "command", "git_commit")},
                        probe=export.results.get("probe"), record_info=export.results.get("record"),
                        config=export.results.get("config"), metric_weights=computed["weights"],
                        runs={n: {"variant": r["variant"], "seed": r["seed"], "steps": r["steps"],
                                  "gpu_metrics": r["metrics"], "cpu_metrics": r["cpu_metrics"]["metrics"],
                                  "unavailable": r["cpu_metrics"]["unavailable"], "curve": r["curve"],
                                  "drift": r["drift"], "train_seconds": r["train_seconds"]}
                              for n, r in computed["runs"].items()},
                        untrained=computed["untrained"])
    record["headline"] = headline(export, computed, machine_summary(machine))
    append_record(args.out, record)
    commands = {
        "GPU (one call)": args.gpu_command or export.results.get("command") or "",
        "metrics + report (this host)": "python " + " ".join(["bench/transfer.py", *(argv or sys.argv[1:])]),
    }
    doc = write_docs(export, computed, record["headline"], Path(args.docs), commands)
    h = record["headline"]
    print(f"primary {h['primary_metric']}; order {h['observed_order']}; matches paper: {h['ordering_matches_paper']}; "
          f"extrap_ag/scratch: {h['extrap_ag_vs_scratch_ratio']}")
    print(f"appended to {args.out}; wrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
