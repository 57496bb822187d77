"""The transfer experiment's metrics and report step, on the host where the metric networks are cached.

A lent GPU cannot receive the published metric weights (I3D, Inception) nor send back much, so
``pipelines/transfer.py --local`` returns uint8 rollouts (``rollouts-<variant>.safetensors.gz``), the held-out
truth (``heldout.safetensors.gz``) and everything else it measured (``results.json``). This step computes
FVD (16-frame clips, README "Metrics"), FID and LPIPS of every run and of the copy-last-frame and untrained
baselines with the project's :func:`v2w_core.eval.compute_metrics` and :func:`load_metric_nets`, caches
each run's numbers (a stopped report resumes), and builds the headline and the write-up. ``bench/transfer.py``
appends the record; ``python bench/transfer.py EXPORT_DIR`` runs both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.transfer import (
    PAPER_FVD,
    PAPER_ORDER,
    UNTRAINED,
    TransferConfig,
    export_file,
    load_arrays,
    load_heldout,
)

log = logging.getLogger("transfer.report")

METRICS = ("fvd", "fid", "lpips")
#: two-sided 95 % Student-t quantiles by degrees of freedom (n − 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci95(values: list[float]) -> tuple[float | None, list[float] | None]:
    """Mean and the 95 % t-interval of the mean (None with fewer than 2 values)."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    m = float(np.mean(v))
    if len(v) < 2:
        return m, None
    half = T95.get(len(v) - 1, 1.96) * float(np.std(v, ddof=1)) / math.sqrt(len(v))
    return m, [m - half, m + half]


# ------------------------------------------------------------------------------------------- loading
class Export:
    """What a GPU run sent back (``--export`` of pipelines/transfer.py)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.results = json.loads((self.path / "results.json").read_text())
        self.config = TransferConfig.from_dict(self.results["config"], source=str(self.path / "results.json"))
        self.chunks = load_heldout(export_file(self.path, "heldout"))
        arrays, _ = load_arrays(export_file(self.path, "heldout"))
        self.untrained = arrays.get("untrained")

    def rollouts(self, variant: str) -> dict[str, np.ndarray]:
        f = export_file(self.path, f"rollouts-{variant}")
        return load_arrays(f)[0] if f.exists() else {}


def protocol(cfg: TransferConfig, weights: dict[str, str | None]) -> Any:
    from v2w_core.eval.config import EvalConfig

    e = cfg.evaluate
    return EvalConfig.from_dict({"context_frames": e.context_frames, "horizon": e.horizon, "seed": e.seed,
                                 "controllability": False, "metric_weights": weights}, source="transfer report")


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:20]


def run_metrics(chunks: list[Any], gen: np.ndarray, proto: Any, nets: dict[str, Any], cache: Path | None,
                key: str) -> dict[str, Any]:
    """compute_metrics of one run's uint8 rollouts (B, N, H, W, 3); cached in ``cache`` by content."""
    from v2w_core.eval import compute_metrics
    from v2w_core.eval.rollouts import RolloutResult

    weights = {k: getattr(n, "sha256", str(n)) for k, n in nets.items()}
    f = cache / f"{key}-{_digest(gen, weights, proto.model_dump(mode='json'))}.json" if cache else None
    if f is not None and f.exists():
        return json.loads(f.read_text())
    t = time.perf_counter()
    results = [RolloutResult(c.chunk_id, c.episode_id, gen[i].transpose(0, 3, 1, 2)) for i, c in enumerate(chunks)]
    report = compute_metrics(chunks, results, proto, nets)
    out = {"metrics": report.metrics, "unavailable": report.unavailable, "drift": report.drift,
           "seconds": round(time.perf_counter() - t, 1)}
    log.info("metrics of %s in %.0f s: %s", key, out["seconds"],
             {k: round(v, 3) for k, v in report.metrics.items() if k in ("fvd", "fid", "lpips_mean", "psnr_mean")})
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(out))
    return out


def compute_all(export: Export, *, metrics: tuple[str, ...] = METRICS, weights: dict[str, str] | None = None,
                cache: Path | None = None) -> dict[str, Any]:
    """Every run's and the baselines' metrics (FVD/FID/LPIPS here; PSNR/SSIM/ctrl as the GPU measured them)."""
    from v2w_core.eval.evaluate import load_metric_nets

    chosen = {m: ((weights or {}).get(m, "auto") if m in metrics else None) for m in METRICS}
    proto = protocol(export.config, {"fvd": chosen["fvd"], "fid": chosen["fid"], "lpips": chosen["lpips"]})
    nets = load_metric_nets(proto)
    runs: dict[str, Any] = {}
    for name, res in sorted(export.results["runs"].items()):
        seed = res["seed"]
        gen = export.rollouts(res["variant"]).get(f"gen/s{seed}")
        if gen is None:
            log.warning("%s: no rollouts in the export", name)
            continue
        m = run_metrics(export.chunks, gen, proto, nets, cache, name)
        runs[name] = {**res, "cpu_metrics": m}
    untrained = None
    if export.untrained is not None:
        untrained = run_metrics(export.chunks, export.untrained, proto, nets, cache, UNTRAINED)
    return {"runs": runs, "untrained": untrained, "weights": {k: str(getattr(v, "uri", v)) for k, v in nets.items()}}


# ------------------------------------------------------------------------------------------ headline
def _value(run: dict[str, Any], metric: str) -> float | None:
    m = run["cpu_metrics"]["metrics"]
    key = {"psnr": "psnr_mean", "ssim": "ssim_mean", "lpips": "lpips_mean"}.get(metric, metric)
    v = m.get(key)
    return None if v is None or not math.isfinite(v) else float(v)


def headline(export: Export, computed: dict[str, Any], machine: str) -> dict[str, Any]:
    cfg = export.config
    runs = computed["runs"]
    primary = "fvd" if runs and all(_value(r, "fvd") is not None for r in runs.values()) else "psnr"
    lower_better = primary != "psnr"
    variants: dict[str, Any] = {}
    for v in cfg.variants:
        mine = [r for r in runs.values() if r["variant"] == v.name]
        if not mine:
            continue
        vals = [_value(r, primary) for r in mine]
        mean, ci = mean_ci95(vals)
        row: dict[str, Any] = {"mean": mean, "ci95": ci, "per_seed": dict(zip([r["seed"] for r in mine], vals, strict=True)),
                               "seeds": len(mine), "paper_fvd": PAPER_FVD.get(v.name)}
        for other in ("psnr", "ssim", "lpips", "fid", "fvd"):
            if other != primary:
                row[f"{other}_mean"] = mean_ci95([_value(r, other) for r in mine])[0]
        row["ctrl_psnr_gain_db"] = mean_ci95([r["metrics"].get("ctrl_psnr_gain_db") for r in mine])[0]
        variants[v.name] = row
    present = [n for n in PAPER_ORDER if n in variants and variants[n]["mean"] is not None]
    observed = sorted(present, key=lambda n: variants[n]["mean"] * (1 if lower_better else -1))
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1 :]]
    agree = [(a, b) for a, b in pairs if observed.index(a) < observed.index(b)]
    ratio = overlap = None
    if "extrap_ag" in variants and "scratch_ag" in variants and primary == "fvd":
        a, b = variants["extrap_ag"], variants["scratch_ag"]
        ratio = a["mean"] / b["mean"] if b["mean"] else None
        if a["ci95"] and b["ci95"]:
            overlap = not (a["ci95"][1] < b["ci95"][0] or b["ci95"][1] < a["ci95"][0])
    some = next(iter(runs.values()), None)
    base_metrics = some["cpu_metrics"]["metrics"] if some else {}
    unt = (computed.get("untrained") or {}).get("metrics", {})
    steps = sorted({r["steps"] for r in runs.values()})
    return {
        "primary_metric": primary + ("" if primary == "fvd" else " (FVD unavailable: higher is better)"),
        "variants": variants,
        "observed_order": observed,
        "paper_order": [n for n in PAPER_ORDER if n in present],
        "ordering_matches_paper": bool(present) and observed == present and len(present) == len(PAPER_ORDER),
        "pairs_matching_paper": f"{len(agree)}/{len(pairs)}",
        "pairs_not_matching": [f"{a} < {b}" for a, b in pairs if (a, b) not in agree],
        "extrap_ag_vs_scratch_ratio": ratio,
        "extrap_ag_scratch_intervals_overlap": overlap,
        "target_met": (ratio is not None and ratio <= 0.5 and overlap is False),
        "copy_last": {k: base_metrics.get(f"copy_last_{k}") for k in ("fvd", "fid", "psnr_mean", "ssim_mean",
                                                                       "lpips_mean")},
        "untrained": {k: unt.get(k) for k in ("fvd", "fid", "psnr_mean", "ssim_mean", "lpips_mean")},
        "seeds": sorted({r["seed"] for r in runs.values()}),
        "finetune_steps": steps[0] if len(steps) == 1 else steps,
        "missing_runs": export.results.get("missing", []),
        "heldout_chunks": len(export.chunks),
        "heldout_episodes": len({c.episode_id for c in export.chunks}),
        "device": export.results.get("device"),
        "gpu_seconds": export.results.get("gpu_seconds"),
        "machine": machine,
    }


# ---------------------------------------------------------------------------------------------- docs
def plot_curves(runs: dict[str, Any], path: Path) -> Path:
    """Held-out PSNR / SSIM of the curve chunks vs fine-tuning steps, mean over seeds, per variant."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    by_variant: dict[str, list[list[dict[str, Any]]]] = {}
    for r in runs.values():
        by_variant.setdefault(r["variant"], []).append(r["curve"])
    for name, curves in by_variant.items():
        steps = sorted({p["step"] for c in curves for p in c})
        for ax, key in zip(axes, ("psnr", "ssim"), strict=True):
            ys = [np.mean([p[key] for c in curves for p in c if p["step"] == s]) for s in steps]
            ax.plot(steps, ys, marker="o", label=name)
    for ax, key in zip(axes, ("PSNR dB", "SSIM"), strict=True):
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel(f"held-out {key}")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_strips(export: Export, out_dir: Path) -> dict[str, Path]:
    from pipelines.transfer import save_strip

    paths = {}
    k = export.config.evaluate.strip_chunks
    for v in export.config.variants:
        arrays = export.rollouts(v.name)
        seeds = sorted(int(key.split("/s")[1]) for key in arrays if key.startswith("gen/"))
        if not seeds:
            continue
        s = seeds[0]
        paths[v.name] = out_dir / f"strip-{v.name}.png"
        save_strip(paths[v.name], export.chunks[:k], arrays[f"gen/s{s}"][:k], arrays[f"shuffled/s{s}"][:k],
                   export.config.evaluate.context_frames)
    return paths


def _fmt(x: Any, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def write_docs(export: Export, computed: dict[str, Any], head: dict[str, Any], docs_dir: Path,
               commands: dict[str, str]) -> Path:
    """``docs_dir/transfer.md`` + ``docs_dir/transfer/*.png``."""
    img_dir = docs_dir / "transfer"
    curve_png = plot_curves(computed["runs"], img_dir / "quality_vs_steps.png")
    strips = write_strips(export, img_dir)
    primary = head["primary_metric"].split()[0].upper()
    lines = [
        "# The transfer experiment (issue 17)",
        "",
        ("Does causalizing a pretrained bidirectional video model (Vid2World) beat training the same "
        "architecture from scratch? Six world models from one base, fine-tuned with diffusion forcing for "
        f"the same **{head['finetune_steps']}** steps on the same episodes, seeds {head['seeds']}, evaluated on "
        f"the same {head['heldout_chunks']} held-out chunks of {head['heldout_episodes']} episodes never seen in "
        f"training or pretraining ({export.config.evaluate.context_frames} context + "
        f"{export.config.evaluate.horizon} generated frames). Written by `bench/transfer.py` from "
        "`bench/results/transfer.json`."),
        "",
        f"| variant | paper FVD | {primary} mean [95 % CI] | PSNR dB | SSIM | LPIPS | FID | ctrl gain dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in PAPER_ORDER:
        row = head["variants"].get(name)
        if row is None:
            continue
        ci = row["ci95"]
        psnr = row["mean"] if primary == "PSNR" else row.get("psnr_mean")
        lines.append(
            f"| {name} | {row['paper_fvd']} | {_fmt(row['mean'], 1)} "
            f"{'[' + _fmt(ci[0], 1) + ', ' + _fmt(ci[1], 1) + ']' if ci else ''} | {_fmt(psnr)} | "
            f"{_fmt(row.get('ssim_mean'), 3)} | {_fmt(row.get('lpips_mean'), 3)} | {_fmt(row.get('fid_mean'), 1)} | "
            f"{_fmt(row.get('ctrl_psnr_gain_db'))} |")
    for label, b in (("copy last context frame", head["copy_last"]), ("untrained causal base", head["untrained"])):
        lines.append(f"| {label} | | {_fmt(b.get('fvd') if primary == 'FVD' else b.get('psnr_mean'), 1)} | "
                     f"{_fmt(b.get('psnr_mean'))} | {_fmt(b.get('ssim_mean'), 3)} | {_fmt(b.get('lpips_mean'), 3)} | "
                     f"{_fmt(b.get('fid'), 1)} | |")
    lines += [
        "",
        f"- observed order (best → worst by {primary}): {' < '.join(head['observed_order'])}",
        (f"- paper order: {' < '.join(head['paper_order'])}; matches: **{head['ordering_matches_paper']}** "
        f"({head['pairs_matching_paper']} pairs agree; not: {', '.join(head['pairs_not_matching']) or 'none'})"),
        (f"- extrap_ag ÷ scratch_ag ({primary}): {_fmt(head['extrap_ag_vs_scratch_ratio'], 3)} (target ≤ 0.5 with "
        f"non-overlapping intervals; intervals overlap: {head['extrap_ag_scratch_intervals_overlap']}); "
        f"target met: **{head['target_met']}**"),
        (f"- GPU: {head['device']}, {_fmt(head['gpu_seconds'], 0)} s for the whole call (record, probe, "
        f"{len(computed['runs'])} fine-tunes + rollouts); metrics on {head['machine']}"),
        f"- runs missing from the export: {', '.join(head['missing_runs']) or 'none'}",
        "",
        "## Quality vs fine-tuning steps",
        "",
        (f"Held-out PSNR / SSIM of the first {export.config.evaluate.curve_chunks} chunks (EMA weights), mean over "
        "seeds:"),
        "",
        f"![quality vs steps](transfer/{curve_png.name})",
        "",
        "## Rollouts (seed 0; rows: truth, recorded actions, shuffled actions — same noise)",
        "",
    ]
    for name, p in strips.items():
        lines += [f"**{name}**", "", f"![{name}](transfer/{p.name})", ""]
    lines += [
        "## Commands",
        "",
        "```bash",
        *[f"# {k}\n{v}" for k, v in commands.items()],
        "```",
        "",
        "## Honest reading",
        "",
        "<!-- the lead finishes this section: which orderings reproduce, which don't, and why that might be -->",
        (f"- Reproduced pairs: {head['pairs_matching_paper']}. Not reproduced: "
        f"{', '.join(head['pairs_not_matching']) or 'none'}."),
        ("- Scale: a 2.3 M-parameter UNet3D at 64×64 on ViZDoom, fine-tuned for "
        f"{head['finetune_steps']} steps (paper: a video diffusion model pretrained on web video, RT-1, 30k steps)."),
        (f"- FVD from {head['heldout_chunks']} clips is a small-sample estimate (400-d I3D features); compare it only "
        "within this table."),
        "- TODO(lead): the reading.",
        "",
    ]
    path = docs_dir / "transfer.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


__all__ = ["Export", "compute_all", "headline", "mean_ci95", "write_docs"]
