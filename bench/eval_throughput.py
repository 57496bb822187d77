"""Evaluation throughput: held-out rollouts per minute on CPU, 1 Ray actor vs. as many as cores allow.

The embedded tiny UNet3D preset (``tiny_unet3d`` from :func:`v2w_core.models.testing.tiny_world_model`,
3×64×64 pixels, random causal weights: speed does not depend on training), causal action guidance on, ``--steps`` DDIM steps, ``--context`` context frames and
``--horizon`` generated frames per rollout, controllability off (one rollout per chunk). Each actor loads
the model once and runs ``torch_threads=1``; chunks are handed out as actors free up. Wall time includes
actor start-up (model load), which is what an evaluate stage pays.

    .venv/bin/python bench/eval_throughput.py [--episodes 8] [--steps 4] [--horizon 4] [--actors 1,N]

Prints a table and appends one record per run to bench/results/eval_throughput.json (``bench/_record.py``):
settings, rows, the machine and a ``headline`` (rollouts per minute per number of actors).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._record import append_record, machine_info, machine_summary, new_record
from v2w_core.data.episode import ActionSpace, Episode
from v2w_core.data.shards import ShardWriterConfig, write_episodes
from v2w_core.eval.config import EvalConfig
from v2w_core.eval.rollouts import load_chunks, run_parallel_rollouts
from v2w_core.models.io import save_world_model
from v2w_core.models.testing import tiny_world_model

RESULTS = Path(__file__).resolve().parent / "results" / "eval_throughput.json"


def episodes(n: int, length: int) -> list[Episode]:
    rng = np.random.default_rng(0)
    return [
        Episode(
            episode_id=f"bench{i:03d}",
            frames=rng.integers(0, 255, size=(length, 64, 64, 3), dtype=np.uint8),
            actions=rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
            action_space=ActionSpace(type="continuous", dim=2),
            domain="robot",
            source="bench",
            fps=10.0,
        )
        for i in range(n)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--context", type=int, default=4)
    p.add_argument("--horizon", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--actors", default=f"1,{os.cpu_count()}")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="v2w-bench-eval-"))
    model = tiny_world_model(action_space={"type": "continuous", "dim": 2}, causal_mode="extrapolative")
    save_world_model(model, str(work / "model"))
    write_episodes(
        episodes(args.episodes, args.context + args.horizon),
        str(work / "data"),
        ShardWriterConfig.from_dict({"codec": {"name": "zstd"}, "eval_fraction": 1.0}),
    )
    ray.init(
        num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1"
    )
    rows = []
    for n in [int(x) for x in args.actors.split(",")]:
        cfg = EvalConfig.from_dict({
            "context_frames": args.context, "horizon": args.horizon, "num_actors": n, "controllability": False,
            "rollout": {"num_inference_steps": args.steps},
        })  # fmt: skip
        chunks = load_chunks(str(work / "data"), cfg)
        t0 = time.perf_counter()
        results = run_parallel_rollouts(str(work / "model"), chunks, cfg)
        wall = time.perf_counter() - t0
        per = float(np.mean([r.seconds for r in results]))
        rows.append({"actors": n, "rollouts": len(results), "wall_s": wall,
                     "rollouts_per_min": 60 * len(results) / wall, "s_per_rollout_in_actor": per})  # fmt: skip
    ray.shutdown()
    print(f"{'actors':>6} {'rollouts':>8} {'wall s':>8} {'rollouts/min':>13} {'s/rollout (actor)':>18}")
    for r in rows:
        print(f"{r['actors']:>6} {r['rollouts']:>8} {r['wall_s']:>8.1f} {r['rollouts_per_min']:>13.1f} "
              f"{r['s_per_rollout_in_actor']:>18.2f}")  # fmt: skip
    record = new_record(
        "eval_throughput",
        machine=machine_info(("ray",)),
        settings=vars(args) | {"out": str(args.out), "model": "tiny_unet3d 64x64", "guidance": 2.5},
        results=rows,
    )
    record["headline"] = headline(record)
    append_record(args.out, record)
    print(f"appended to {args.out}")


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """Rollouts per minute (wall, actor start-up included) and seconds per rollout inside an actor, per
    number of actors; the speed-up of the most actors over one."""
    rows = record["results"]
    per_min = {str(r["actors"]): round(r["rollouts_per_min"], 2) for r in rows}
    one = next((r["rollouts_per_min"] for r in rows if r["actors"] == 1), None)
    most = max(rows, key=lambda r: r["actors"], default=None)
    s = record["settings"]
    return {
        "rollouts_per_min": per_min,
        "s_per_rollout_in_actor": {str(r["actors"]): round(r["s_per_rollout_in_actor"], 3) for r in rows},
        "speedup_most_actors_vs_1": round(most["rollouts_per_min"] / one, 2) if one and most else None,
        "protocol": f"context {s['context']}, horizon {s['horizon']}, {s['steps']} DDIM steps",
        "machine": machine_summary(record["machine"], load=True),
    }


if __name__ == "__main__":
    main()
