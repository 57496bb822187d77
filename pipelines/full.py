"""The vid2world pipeline as a Ray DAG.

    python pipelines/full.py --config configs/tiny.yaml [--set clips.stride=4] [--from clips]
    ray job submit --address http://127.0.0.1:8266 --working-dir . -- python pipelines/full.py --config …

Stages (each a Ray task with its own resources, skipped when its outputs exist with the same
fingerprint): ingest → clips (round-trip check) and ingest → [encode: VAE latents, when
``latents.vae_uri`` is set] → base → causalize → train → evaluate → register.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a working dir

from pipelines.common import connect_ray, start_tracking, use_stack_env
from pipelines.config import PipelineConfig, stage_configs
from pipelines.dag import Stage, StageResult, build_and_run, downstream_of
from pipelines.preflight import PreflightError, preflight
from pipelines.stages import (
    base_stage,
    causalize_stage,
    clips_stage,
    encode_stage,
    evaluate_stage,
    ingest_stage,
    register_stage,
    train_stage,
)
from v2w_core.config import ConfigError
from v2w_core.data.clips import configure_progress

log = logging.getLogger("pipelines.full")


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The DAG. Each stage gets its typed config (:func:`pipelines.config.stage_configs`): its own section
    plus what it reads from others, so changing one section re-runs that stage and what depends on it."""
    sc = stage_configs(cfg)
    # With a VAE configured, an encode stage turns the clips into latents once; the model stages read those.
    # It waits for the clips stage's round trip: two Ray Data executions at once can starve each other of
    # CPUs on a small cluster (seen on 2 CPUs: both stalled), and a bad data set should fail before encoding.
    enc: tuple[str, ...] = ("encode",) if sc.encode is not None else ()
    encode = [Stage("encode", encode_stage, sc.encode, ("ingest", "clips"), num_cpus=0.1)] if sc.encode else []
    return [
        Stage("ingest", ingest_stage, sc.ingest, num_cpus=cfg.data.num_cpus),
        Stage("clips", clips_stage, sc.clips, ("ingest",), num_cpus=0.25),
        *encode,
        Stage("base", base_stage, sc.base, ("ingest", *enc), num_cpus=cfg.base.num_cpus),
        Stage("causalize", causalize_stage, sc.causalize, ("ingest", "base"), num_cpus=0.5),
        Stage("train", train_stage, sc.train, ("ingest", "causalize", *enc), num_cpus=cfg.train.num_cpus),
        Stage("evaluate", evaluate_stage, sc.evaluate, ("ingest", "causalize", "train"),
              num_cpus=cfg.evaluate.num_cpus),
        # The registered model samples with the rollout settings it was evaluated with (its pyfunc's config).
        Stage("register", register_stage, sc.register, ("ingest", "evaluate"), num_cpus=0.1),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML-parsed), repeatable")
    p.add_argument("--from", dest="from_stage", help="re-run this stage and everything after it")
    p.add_argument("--fail-after", metavar="STAGE", default=None,
                   help="fault injection: crash the pipeline once STAGE has finished (a rerun resumes)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray started here)")
    p.add_argument("--local-stack", action="store_true",
                   help="use the local stack started by `python -m infra.stack start` (endpoints, "
                        "dummy credentials, Ray head) for every variable not already set")
    p.add_argument("--create-bucket", action="store_true",
                   help="create run.root's bucket if it does not exist (default: a missing bucket is an "
                        "error; with --local-stack it is created)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of setup errors")
    return p.parse_args(argv)


def summarize(results: dict[str, StageResult]) -> str:
    """The final table: one row per stage (ran or cached, time, its main outputs)."""
    rows = [("stage", "status", "time", "outputs")]
    for name, r in results.items():
        brief = ", ".join(f"{k}={v}" for k, v in r.outputs.items()
                          if isinstance(v, (bool, int, float, str)) and len(str(v)) <= 60)  # fmt: skip
        rows.append((name, "cached" if r.skipped else "ran", "-" if r.skipped else f"{r.seconds:.1f}s",
                     brief[:110] + ("..." if len(brief) > 110 else "")))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "  " + "-" * (sum(widths) + 6 + 7))
    return "\n".join(lines)


def setup(args: argparse.Namespace) -> tuple[PipelineConfig, list[Stage], set[str]]:
    """Load the config and run the preflight checks: everything that can be wrong with the command line,
    the config or the services, found before Ray starts or an MLflow run exists."""
    use_stack_env(local_stack=args.local_stack)
    cfg = PipelineConfig.from_yaml(args.config, args.overrides)
    stages = build_stages(cfg)
    force = downstream_of(stages, args.from_stage) if args.from_stage else set()
    address = None if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") else (
        args.ray_address or os.environ.get("RAY_ADDRESS"))  # fmt: skip
    preflight(cfg, ray_address=address, create_bucket=args.create_bucket or args.local_stack)
    return cfg, stages, force


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg, stages, force = setup(args)
        connect_ray(args.ray_address)
    except (ConfigError, PreflightError, ValueError, ConnectionError, TimeoutError) as err:
        if args.debug:
            raise
        print(f"error: {' '.join(str(err).split()) if isinstance(err, PreflightError) else err}",
              file=sys.stderr)  # fmt: skip
        return 2
    configure_progress()
    tracking = start_tracking(cfg)
    status = "FAILED"
    try:
        results = build_and_run(stages, cfg.run.root, force=force, tracking=tracking,
                                fail_after=args.fail_after)
        status = "FINISHED"
    finally:
        if tracking is not None:
            from v2w_core.tracking import terminate_run

            terminate_run(tracking["tracking_uri"], tracking["parent_run_id"], status)
    print(f"pipeline {cfg.run.name!r} finished ({cfg.run.root}):\n{summarize(results)}")
    clips = results["clips"].outputs
    print(f"round trip: {clips['episodes_read']}/{clips['episodes_expected']} episodes read, "
          f"{clips['episodes_bad']} bad, {clips['clips']} clips of shape {clips['clip_shape']}, "
          f"counts reconcile: {clips['reconciles']}")
    ev, reg = results["evaluate"].outputs, results["register"].outputs
    base = ev.get("baseline_metrics", {})
    print(f"evaluation: PSNR {ev['metrics'].get('psnr_mean', float('nan')):.2f} dB "
          f"(untrained causal base {base.get('psnr_mean', float('nan')):.2f} dB), "
          f"SSIM {ev['metrics'].get('ssim_mean', float('nan')):.3f}; unavailable: {sorted(ev['unavailable'])}")
    print(f"registry: {reg['name']} v{reg['version']} -> {reg['decision']} ({reg['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
