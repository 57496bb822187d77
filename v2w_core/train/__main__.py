"""CLI: ``python -m v2w_core.train --config run.yaml --set optim.lr=1e-5 --set max_steps=1000``.

Connects to the Ray cluster in ``RAY_ADDRESS`` (or starts a local one), runs :func:`v2w_core.train.train`
and prints the :class:`~v2w_core.train.api.TrainResult` as JSON on stdout (the only print: it is the
command's output, which scripts parse).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from v2w_core.config import ConfigError
from v2w_core.train.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m v2w_core.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file with a TrainConfig")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, repeatable"
    )
    parser.add_argument("--check", action="store_true", help="validate the config and print it; do not train")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = TrainConfig.from_yaml(args.config, args.set)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(cfg.model_dump(mode="json"), indent=1))
        return 0
    from v2w_core.train.api import train

    try:
        result = train(cfg)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(result), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
