"""How strongly each action moves the frames of a source: is there action signal for a world model to learn?

Before blaming a model for ignoring its actions, check that the data's actions change what is seen. For
every transition frame t → t+1 (the result of ``actions[t]``, the Episode contract) of ``--episodes``
recorded episodes, grouped by the action taken:

* ``dx`` / ``dy``: the image translation between the two frames, by phase correlation of the grey frames
  (numpy's FFT; integer pixels, + = content moved right / down). A first-person turn is a horizontal
  translation of most of the view;
* ``abs_diff``: mean absolute pixel change (0–255), what any other effect (walking, doors) shows up in.

    python bench/action_signal.py                                   # ViZDoom as the demo records it
    python bench/action_signal.py --source vizdoom --option sticky=0.0 --episodes 48

Prints a table per action and appends one record to bench/results/action_signal.json (``bench/_record.py``)
with ``headline``: the source, transitions, and per action name the mean ``dx`` of transitions where that
button alone was pressed (multi-hot) or that class was taken (discrete), and the no-op's mean ``abs_diff``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._record import append_record, format_table, machine_summary, new_record
from v2w_core.config import ConfigError
from v2w_core.data.converters import parse_options
from v2w_core.data.sources import get_source
from v2w_core.eval.motion import frame_shifts

RESULTS = ROOT / "bench" / "results" / "action_signal.json"


def action_key(action: np.ndarray) -> tuple[int, ...]:
    return tuple(round(float(x)) for x in np.atleast_1d(action))


def measure(episodes: Any) -> tuple[dict[tuple[int, ...], list[tuple[int, int, float]]], Any]:
    """Per action taken: (dx, dy, mean |Δ|) of every transition it caused; and the action space."""
    rows: dict[tuple[int, ...], list[tuple[int, int, float]]] = defaultdict(list)
    space = None
    for ep in episodes:
        space = ep.action_space
        shifts = frame_shifts(ep.frames.transpose(0, 3, 1, 2))  # (T - 1, 2)
        change = np.abs(np.diff(ep.frames.astype(np.float32).mean(-1), axis=0)).mean(axis=(1, 2))
        for t, ((dx, dy), diff) in enumerate(zip(shifts, change, strict=True)):
            rows[action_key(ep.actions[t])].append((int(dx), int(dy), float(diff)))
    return rows, space


def summarise(rows: dict[tuple[int, ...], list[tuple[int, int, float]]]) -> list[dict[str, Any]]:
    out = []
    for key, vals in sorted(rows.items()):
        v = np.asarray(vals, dtype=np.float64)
        out.append({"action": list(key), "transitions": len(v), "dx": v[:, 0].mean(), "abs_dx": np.abs(v[:, 0]).mean(),
                    "dy": v[:, 1].mean(), "abs_diff": v[:, 2].mean()})  # fmt: skip
    return out


def headline(
    per_action: list[dict[str, Any]], space: Any, source: str, record: dict[str, Any]
) -> dict[str, Any]:
    """Mean dx per named action (that button alone, or that class), and the no-op's frame change."""
    names = list(getattr(space, "names", None) or [])
    single: dict[str, float] = {}
    noop = None
    for row in per_action:
        key = row["action"]
        if getattr(space, "type", None) == "discrete":
            label = names[key[0]] if key[0] < len(names) else str(key[0])
            single[label] = round(row["dx"], 2)
        elif sum(key) == 1 and len(key) == len(names):
            single[names[key.index(1)]] = round(row["dx"], 2)
        if sum(key) == 0:
            noop = round(row["abs_diff"], 2)
    return {
        "source": source,
        "transitions": sum(r["transitions"] for r in per_action),
        "mean_dx_px_by_action": single,
        "noop_abs_diff": noop,
        "machine": machine_summary(record["machine"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="vizdoom")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="source option (value parsed as YAML)",
    )
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    try:
        options = parse_options(args.option, flag="--option")
    except ConfigError as err:
        p.error(str(err))
    t0 = time.perf_counter()
    rows, space = measure(get_source(args.source, **options).episodes(args.episodes, seed=args.seed))
    per_action = summarise(rows)
    record = new_record("action_signal", settings={"source": args.source, "options": options,
                                                   "episodes": args.episodes, "seed": args.seed},
                        action_names=list(getattr(space, "names", None) or []), per_action=per_action)  # fmt: skip
    record["seconds"] = time.perf_counter() - t0
    record["headline"] = headline(per_action, space, args.source, record)
    append_record(args.out, record)
    print(f"action_signal: {args.source} {options or ''}, {args.episodes} episodes, actions "
          f"{record['action_names'] or '(unnamed)'}")  # fmt: skip
    print(format_table(per_action, ["action", "transitions", "dx", "abs_dx", "dy", "abs_diff"],
                       ["action", "transitions", "mean dx px", "mean |dx| px", "mean dy px", "mean |Δ| (0–255)"]))  # fmt: skip
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
