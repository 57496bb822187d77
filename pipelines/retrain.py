"""Scheduled retraining: warm-start from the champion on the episodes added since it was trained.

    python pipelines/retrain.py --config configs/tiny.yaml [--local-stack] [--set train.train.max_steps=…]

1. Find the registry's ``champion`` of ``registry.model_name`` and the data it was trained on (the
   ``v2w.data_manifest`` / ``v2w.data_cutoff`` tags the register stage writes).
2. Episodes appended to that manifest after the cutoff are the new data; none → nothing to do (exit 0).
3. Fine-tune from the champion's weights on the train split (old + new episodes).
4. Evaluate on the champion's held-out split (the frozen snapshot its version carries, see
   ``freeze_eval_split``) so the comparison is like for like, then register; ``champion`` moves only if
   the new model is better, and the new version carries the same snapshot to the next retraining.

Steps 3-4 are the DAG's train, evaluate and register stages (``pipelines/stages.py``: :func:`finetune`,
:func:`evaluate_model`, :func:`register`), called with the champion in place of the causalize stage's model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.common import connect_ray, start_tracking, use_stack_env
from pipelines.config import PipelineConfig, stage_configs
from pipelines.stages import evaluate_model, finetune, freeze_eval_split, manifest_action_space, register
from v2w_core import storage
from v2w_core.data.manifest import Manifest

log = logging.getLogger("pipelines.retrain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--local-stack", action="store_true", help="use the local stack's endpoints (see full.py)")
    p.add_argument("--ray-address", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    use_stack_env(local_stack=args.local_stack)
    cfg = PipelineConfig.from_yaml(args.config, args.overrides)

    from v2w_core.tracking import champion_version, model_versions, terminate_run

    sc = stage_configs(cfg)
    tracking = start_tracking(cfg.model_copy(update={"run": cfg.run.model_copy(update={"tracking": True})}))
    uri, name = tracking["tracking_uri"], cfg.registry.model_name
    try:
        champion = champion_version(name, tracking_uri=uri)
    except Exception as err:  # noqa: BLE001 - MLflow raises its own RestException subclasses
        raise SystemExit(
            f"no champion for {name!r} in the registry ({type(err).__name__}): run pipelines/full.py first; "
            "versions that did not beat copy-last-frame are registered but rejected (tag v2w.rejected) and "
            "never become champion, so there is nothing to warm-start from"
        ) from None
    tags = champion.tags
    manifest_uri, cutoff = tags["v2w.data_manifest"], datetime.fromisoformat(tags["v2w.data_cutoff"])
    manifest = Manifest.read(manifest_uri)
    new = manifest.select(since=cutoff + timedelta(microseconds=1))
    last_version, last_cutoff = latest_attempt(model_versions(name, tracking_uri=uri), manifest_uri, cutoff)
    if len(manifest.select(since=last_cutoff + timedelta(microseconds=1))) == 0:
        # Nothing new since the champion, or since the last challenger that already tried these episodes.
        print(f"retrain: no episodes added to {manifest_uri} since {last_cutoff.isoformat()} (data of "
              f"{name} v{last_version}); champion v{champion.version} stays")
        terminate_run(uri, tracking["parent_run_id"], "FINISHED")
        return 0
    log.info("%d new episodes since %s; warm-starting from %s v%s", len(new), cutoff, name, champion.version)

    connect_ray(args.ray_address)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    root = storage.join(cfg.run.root, "retrain", stamp)
    parent = tracking["parent_run_id"]
    # The DAG's own train → evaluate → register, with the champion (already causal, with its action
    # encoder) as the causal base, the champion's frozen held-out split, and no untrained-base baseline.
    champion_base = {"model": tags["v2w.model_uri"], "causal_mode": cfg.causalize.causal_mode,
                     "action_space": manifest_action_space(manifest_uri)}
    trained = finetune(sc.train, experiment=f"retrain-{stamp}", output_dir=root, manifest=manifest_uri,
                       causal=champion_base, tracking=tracking, parent_run_id=parent)
    eval_manifest_uri = champion_eval_split(tags, manifest, cutoff, sc.evaluate.protocol.split)
    evaluation = evaluate_model(sc.evaluate, trained["model"], eval_manifest_uri, tracking=tracking,
                                parent_run_id=parent, run_name="eval:retrained")
    promo = register(sc.register, evaluation, manifest_uri, tracking=tracking)
    terminate_run(uri, parent, "FINISHED")
    print(f"retrain: {len(new)} new episodes; {name} v{promo['version']} -> {promo['decision']} "
          f"({promo['reason']})")
    return 0


def latest_attempt(versions, manifest_uri: str, champion_cutoff: datetime) -> tuple[str, datetime]:
    """(version, data cutoff) of the newest version trained on ``manifest_uri``: a challenger that lost
    already saw the episodes up to its cutoff, so only episodes after it justify another run."""
    best: tuple[str, datetime] = ("?", champion_cutoff)
    for v in versions:
        tags = v.tags or {}
        if tags.get("v2w.data_manifest") == manifest_uri and tags.get("v2w.data_cutoff"):
            cut = datetime.fromisoformat(tags["v2w.data_cutoff"])
            if cut >= best[1]:
                best = (str(v.version), cut)
    return best


def champion_eval_split(tags: dict[str, str], manifest, cutoff: datetime, split: str) -> str:
    """The held-out split the champion was evaluated on: its frozen snapshot (``v2w.eval_manifest``,
    written by the register stage and carried by every retrained version), else the split's episodes
    that existed at its cutoff, frozen now. New eval episodes never enter the comparison."""
    from v2w_core.tracking import EVAL_MANIFEST_TAG

    if tags.get(EVAL_MANIFEST_TAG):
        return tags[EVAL_MANIFEST_TAG]
    at_cutoff = Manifest(manifest.table.filter(_created_before(manifest, cutoff)), manifest.root)
    uri = storage.join(manifest.root, f"manifest-at-{cutoff.strftime('%Y%m%dT%H%M%S%f')}.parquet")
    at_cutoff.write(uri)
    return freeze_eval_split(uri, split)


def _created_before(manifest, cutoff: datetime):
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = pa.scalar(cutoff, type=manifest.table.schema.field("created_at").type)
    return pc.less_equal(manifest.table.column("created_at"), ts)


if __name__ == "__main__":
    sys.exit(main())
