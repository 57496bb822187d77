"""Driver for tests/train/test_two_nodes.py, run in its own process (``python -m tests.train.two_node_run``).

Why a separate process: the test session already holds a Ray connection (the session-scoped single-node
cluster of tests/conftest.py), and one process can be the driver of one Ray cluster at a time. This
process starts a two-node cluster on loopback with ``ray.cluster_utils.Cluster`` (a head and a second
node: each its own raylet and object store), runs the scenario and prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

from tests.conftest import s3_env_for_workers
from tests.train.helpers import dataset, train_cfg
from v2w_core.config import ConfigError

# Two logical CPUs per node: a worker reserves 0.5 and Ray Data's read tasks ask for 1.
NODE = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 512 * 1024**2}


def run(prefix: str) -> dict[str, Any]:
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from v2w_core.train.api import check_resources, train

    # Every Ray server on loopback: the flag for this process, the variable for the nodes' processes.
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    temp_dir = tempfile.mkdtemp(prefix="v2w-ray2-", dir="/tmp")  # short: Ray's socket paths are bounded
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False, "temp_dir": temp_dir})
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        # RAY_ADDRESS for Ray Train's helper actors, which otherwise pick "the latest" cluster on the host.
        env = {**s3_env_for_workers(), "RAY_ADDRESS": cluster.address}
        ray.init(address=cluster.address, runtime_env={"env_vars": env}, log_to_driver=False)
        alive = [n for n in ray.nodes() if n["Alive"]]
        out: dict[str, Any] = {"node_addresses": sorted(n["NodeManagerAddress"] for n in alive)}

        spread = {"num_workers": 2, "cpus_per_worker": 0.5, "placement_strategy": "STRICT_SPREAD"}
        try:
            check_resources(train_cfg(prefix, experiment="three", scaling={**spread, "num_workers": 3}))
            out["strict_spread_3_error"] = None
        except ConfigError as err:
            out["strict_spread_3_error"] = str(err)

        cfg = train_cfg(
            prefix,
            experiment="two-nodes",
            mode="pretrain",
            zero_stage=2,
            max_steps=4,
            scaling=spread,
            checkpoint={"every_n_steps": 2, "keep": 2, "max_failures": 1},
            fault_injection={"at_step": 3, "rank": 1, "kind": "exit"},
        )
        result = train(cfg, dataset=dataset(16))
        out.update(metrics=result.metrics, checkpoint_uri=result.checkpoint_uri, run_dir=cfg.run_dir)
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prefix", help="s3://bucket/prefix/ for the run's checkpoints")
    out = run(parser.parse_args().prefix)
    print("TWO_NODE_RESULT " + json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
