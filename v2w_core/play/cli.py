"""``v2w-play --model <uri>``: check the model, serve it, print the URL, serve until Ctrl-C.

Every check that can fail on the user's input runs before Ray starts (the URI resolves, the model is an
action-conditioned causal world model, the held-out manifest reads, the port is free) and fails as one
line on stderr with exit status 2 (``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from v2w_core.play.errors import PlayError

#: Denoising steps per frame of a model without a registered rollout config (the demo evaluates with 10).
DEFAULT_STEPS = 10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="v2w-play", description="Play a world model in the browser: keyboard → next frame (Ray Serve)."
    )
    p.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version>, "
                   "runs:/<run>/model, a local or s3:// world-model directory, or asset://<name>")  # fmt: skip
    p.add_argument("--episodes", help="manifest URI whose eval episodes are the contexts (default: the "
                   "registered version's frozen held-out split)")  # fmt: skip
    p.add_argument("--vae", help="the VAE that decodes a latent-space model's frames (a diffusers AutoencoderKL "
                   "directory; default: the registered version's tag v2w.vae_uri)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8600)
    p.add_argument("--tracking-uri", help="MLflow server of models:/ and runs:/ URIs (default MLFLOW_TRACKING_URI)")
    p.add_argument("--local-stack", action="store_true", help="read models from the local stack's MLflow and "
                   "S3 (python -m infra.stack; what `make demo` registers to)")  # fmt: skip
    p.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one on loopback)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, …")
    p.add_argument("--steps", type=int, help="default denoising steps per frame (default: the registered "
                   "rollout config's, else 10); the page's slider changes it per session")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=50, help="the slider's upper end")
    p.add_argument("--history-encoding", choices=["recompute", "incremental"],
                   help="recompute: re-encode the window per frame (exact; the registered rollout config's "
                   "default); incremental: carry each session's history cache between key presses (faster, "
                   "approximate once the window slides: docs/streaming.md)")  # fmt: skip
    p.add_argument("--context-frames", type=int, default=8, help="frames of the picked episode to start from")
    p.add_argument("--max-sessions", type=int, default=8)
    p.add_argument("--idle-timeout-s", type=float, default=600.0, help="a session idle this long is dropped")
    p.add_argument("--seed", type=int, default=0, help="first session's seed (then +1 per session)")
    p.add_argument("--no-fast-path", action="store_true", help="on CUDA: plain fp32 eager steps")
    p.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    return p


def settings_from_args(args: argparse.Namespace):
    """Resolve and check the model (:func:`~v2w_core.play.source.resolve_source`) into settings."""
    from v2w_core.play.engine import PlaySettings
    from v2w_core.play.source import resolve_source

    for name in ("max_steps", "context_frames", "max_sessions"):
        if getattr(args, name) < 1:
            raise PlayError(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise PlayError("--steps must be in [1, 1000]")
    if args.idle_timeout_s <= 0:
        raise PlayError("--idle-timeout-s must be > 0")
    src = resolve_source(args.model, tracking_uri=args.tracking_uri, episodes=args.episodes, vae=args.vae)
    if src.eval_manifest:  # read it now: a bad manifest is the user's input, not the replica's crash
        from v2w_core.data.manifest import Manifest

        try:
            Manifest.read(src.eval_manifest)
        except Exception as err:  # noqa: BLE001 - storage / parquet errors, as one line
            raise PlayError(f"cannot read the held-out episodes' manifest {src.eval_manifest}: {err}") from None
    steps = args.steps if args.steps is not None else (None if src.rollout else DEFAULT_STEPS)
    return PlaySettings(
        model_dir=src.model_dir, label=src.label, rollout=src.rollout, eval_manifest=src.eval_manifest,
        vae_uri=src.vae_uri, device=args.device, steps=steps, history_encoding=args.history_encoding,
        max_steps=args.max_steps, max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout_s, context_frames=args.context_frames, seed=args.seed,
        fast_path=not args.no_fast_path,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    from v2w_core.play import server

    try:
        if args.local_stack:
            use_local_stack()
        settings = settings_from_args(args)
        device = settings.device
        num_gpus = 1.0 if device.startswith("cuda") or (device == "auto" and _has_cuda()) else 0.0
        running = server.start(settings, host=args.host, port=args.port, ray_address=args.ray_address,
                               num_gpus=num_gpus)  # fmt: skip
    except PlayError as err:
        if args.debug:
            raise
        hint = ""
        if args.local_stack and "cannot reach the tracking server" in str(err):
            hint = " (the local stack is not running: `make demo` starts it and registers the demo's model)"
        print(f"v2w-play: error: {err}{hint}", file=sys.stderr)
        return 2
    print(f"v2w-play: {settings.label or settings.model_dir} at {running.url}  (Ctrl-C stops)", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(0.5):  # a timed wait: signal handlers run between the waits
            pass
    finally:
        print("v2w-play: stopping", flush=True)
        server.stop(running)
    return 0


def use_local_stack() -> None:
    """Fill unset storage / tracking variables from the local stack (as ``pipelines/full.py --local-stack``
    does). Its Ray variables are left out: play starts its own Ray on loopback."""
    import os

    from infra.stack import StackConfig

    for key, value in StackConfig.from_env().client_env().items():
        if not key.startswith("RAY_"):
            os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    raise SystemExit(main())
