"""Held-out rollouts, serial or in parallel Ray actors, reproducible independently of the actor layout.

A *chunk* is ``context_frames + horizon`` consecutive frames of an eval-split episode with the recorded
actions. Each chunk is rolled out alone (batch 1) with a ``torch.Generator`` seeded from
``(config.seed, chunk_id)`` (:func:`chunk_seed`), so which actor runs it, and in which order, cannot change
its frames. With controllability on, the same chunk is rolled out a second time from the *same* seed with
its future-steering actions permuted (:func:`shuffled_actions`): the two rollouts then differ only through
the actions. With the steering probe on, it is rolled out once more per probe action, from the same seed,
for ``steering.horizon`` frames with that action held (:mod:`v2w_core.eval.steering`).

Actors (:class:`RolloutWorker` wrapped by ``ray.remote``) load the model once; chunks are handed out by a
``ray.util.ActorPool`` as actors free up. On a GPU cluster each actor takes ``gpus_per_actor`` of a GPU; on
CPU each takes ``cpus_per_actor`` cores and runs ``torch_threads`` intra-op threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from v2w_core.data.manifest import Manifest
from v2w_core.eval.config import EvalConfig
from v2w_core.eval.steering import held_actions, probe_actions

#: How a rollout actor loads the model: ``load(uri, device=...)`` → world model. Default
#: :func:`v2w_core.models.io.load_stored_model` (local, ``s3://``, ``asset://``); pass
#: :func:`v2w_core.tracking.load_model` for MLflow URIs. Ray pickles it into every actor.
ModelLoader = Callable[..., Any]

logger = logging.getLogger(__name__)


@dataclass
class EvalChunk:
    """One held-out piece of an episode: frames uint8 (K+N, H, W, 3), recorded actions (K+N−1, ...)."""

    chunk_id: str
    episode_id: str
    start: int
    frames: np.ndarray
    actions: np.ndarray


@dataclass
class RolloutResult:
    """Generated futures in model space ([-1, 1]), (N, C, H, W) float32; ``shuffled`` for controllability;
    ``steered``: per steering probe, the (S, C, H, W) frames generated with ``probes[name]`` held."""

    chunk_id: str
    episode_id: str
    generated: np.ndarray
    shuffled: np.ndarray | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    steered: dict[str, np.ndarray] = field(default_factory=dict)
    probes: dict[str, np.ndarray] = field(default_factory=dict)


def chunk_seed(seed: int, chunk_id: str) -> int:
    """A 63-bit seed from the run seed and the chunk id (stable across machines and Python versions)."""
    digest = hashlib.sha256(f"{seed}:{chunk_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def load_chunks(manifest: Manifest | str, config: EvalConfig) -> list[EvalChunk]:
    """Cut the split's episodes into chunks (sorted by episode id, so the selection is deterministic)."""
    from v2w_core.data.shards import iter_episodes

    if isinstance(manifest, str):
        manifest = Manifest.read(manifest)
    selected = manifest.select(split=config.split)
    need = config.chunk_length
    rows = sorted((r for r in selected.rows() if r["length"] >= need), key=lambda r: r["episode_id"])
    short = len(selected) - len(rows)
    if short:
        logger.warning("%d %s episodes are shorter than %d frames and are skipped", short, config.split, need)
    if config.max_episodes is not None:
        rows = rows[: config.max_episodes]
    if not rows:
        raise ValueError(
            f"no {config.split} episodes of at least {need} frames under {manifest.root}: nothing to evaluate"
        )
    wanted = {r["episode_id"] for r in rows}
    subset = Manifest.from_rows([r for r in selected.rows() if r["episode_id"] in wanted], manifest.root)
    chunks = chunks_from_episodes(iter_episodes(subset), config)
    logger.info("eval: %d chunks from %d %s episodes", len(chunks), len(rows), config.split)
    return chunks


def chunks_from_episodes(episodes: Any, config: EvalConfig) -> list[EvalChunk]:
    """Cut episodes (anything with ``episode_id``, ``frames``, ``actions``, ``length``) into eval chunks,
    sorted by episode id: the same cut :func:`load_chunks` makes from a manifest, for in-memory data."""
    need = config.chunk_length
    chunks: list[EvalChunk] = []
    for ep in sorted(episodes, key=lambda e: e.episode_id):
        for i in range(config.chunks_per_episode):
            start = i * config.stride
            if start + need > ep.length:
                break
            chunks.append(
                EvalChunk(
                    chunk_id=f"{ep.episode_id}@{start}",
                    episode_id=ep.episode_id,
                    start=start,
                    frames=np.ascontiguousarray(ep.frames[start : start + need]),
                    actions=np.ascontiguousarray(ep.actions[start : start + need - 1]),
                )
            )
    return chunks


def split_fingerprint(manifest: Manifest | str, config: EvalConfig) -> str:
    """Identity of "the same eval split": the split's episodes (ids + content hashes) and the protocol.

    Recorded on eval runs and model versions so a promotion only compares numbers measured alike.
    """
    if isinstance(manifest, str):
        manifest = Manifest.read(manifest)
    rows = sorted((r["episode_id"], r["content_hash"]) for r in manifest.select(split=config.split).rows())
    blob = json.dumps(
        {
            "episodes": rows,
            "split": config.split,
            "context": config.context_frames,
            "horizon": config.horizon,
            "max_episodes": config.max_episodes,
            "chunks_per_episode": config.chunks_per_episode,
            "stride": config.stride,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shuffled_actions(actions: np.ndarray, context_frames: int, seed: int) -> np.ndarray:
    """Recorded actions with the future-steering ones (a_{K−1} …) rotated by 1…N−1 places.

    A rotation by a non-zero offset moves every action, so the alternative sequence has the same actions
    (same marginal statistics) in a different order; context actions stay, since the context is given.
    """
    out = actions.copy()
    future = actions[context_frames - 1 :]
    n = len(future)
    if n >= 2:
        offset = 1 + seed % (n - 1)
        out[context_frames - 1 :] = np.roll(future, offset, axis=0)
    return out


def rollout_chunk(
    model: Any,
    chunk: EvalChunk,
    config: EvalConfig,
    *,
    actions: np.ndarray | None = None,
    horizon: int | None = None,
    device: torch.device | str = "cpu",
    codec: Any = None,
) -> np.ndarray:
    """Roll one chunk out: K context frames + actions → N frames (N, C, H, W) float32 in [-1, 1]
    (N = ``horizon``, default the protocol's).

    ``codec`` (a :class:`~v2w_core.models.vae.LatentCodec`, for latent-space models) encodes the context
    and decodes the generated latents, so the result is in pixel space either way."""
    from v2w_core.data.clips import normalize_frames
    from v2w_core.diffusion.rollout import rollout

    k = config.context_frames
    frames = torch.from_numpy(np.array(chunk.frames[:k])).permute(0, 3, 1, 2)  # (K, C, H, W) uint8, a copy
    context = normalize_frames(frames).float()
    if codec is not None:
        context = codec.encode(context)
    context = context[None].to(device)
    acts = chunk.actions if actions is None else actions
    act_t = torch.from_numpy(np.array(acts))[None].to(device) if model.action_encoder is not None else None
    gen = torch.Generator(device="cpu").manual_seed(chunk_seed(config.seed, chunk.chunk_id))
    n = config.horizon if horizon is None else horizon
    out = rollout(model, context, act_t, n, config.rollout, generator=gen)[0].float()
    if codec is not None:
        out = codec.decode(out)
    return out.clamp(-1.0, 1.0).cpu().numpy()


def rollout_chunks(
    model: Any, chunks: list[EvalChunk], config: EvalConfig, *, device: str = "cpu", codec: Any = None
) -> list[RolloutResult]:
    """Serial rollouts in this process (the reference the parallel path must reproduce)."""
    if codec is None and config.vae_uri:
        from v2w_core.models.vae import LatentCodec

        codec = LatentCodec.load(config.vae_uri, device=device)
    probes = steering_probes(model, config)
    results = []
    for chunk in chunks:
        t0 = time.perf_counter()
        generated = rollout_chunk(model, chunk, config, device=device, codec=codec)
        shuffled = None
        if config.controllability and model.action_encoder is not None:
            alt = shuffled_actions(
                chunk.actions, config.context_frames, chunk_seed(config.seed, chunk.chunk_id)
            )
            shuffled = rollout_chunk(model, chunk, config, actions=alt, device=device, codec=codec)
        result = RolloutResult(chunk.chunk_id, chunk.episode_id, generated, shuffled)
        if probes:
            h = config.steering.horizon
            result.probes = probes
            result.steered = {
                name: rollout_chunk(model, chunk, config, device=device, codec=codec, horizon=h,
                                    actions=held_actions(chunk.actions, config.context_frames, action, h))
                for name, action in probes.items()
            }  # fmt: skip
        result.seconds = time.perf_counter() - t0
        results.append(result)
        logger.info("rolled out %s in %.1f s", chunk.chunk_id, results[-1].seconds)
    return results


def steering_probes(model: Any, config: EvalConfig) -> dict[str, np.ndarray]:
    """The steering probe actions of ``model``'s action space (none when the probe is off, the model is
    action-free, or a continuous space names no probes)."""
    if not config.steering.enabled or model.action_encoder is None:
        return {}
    return probe_actions(model.action_encoder.spec, config.steering)


class RolloutWorker:
    """Holds one loaded world model; Ray runs it as an actor (``ray.remote(RolloutWorker)``)."""

    def __init__(self, model_uri: str, config: EvalConfig, load_model: ModelLoader | None = None) -> None:
        from v2w_core.models.io import load_stored_model

        self.config = config
        torch.set_num_threads(self.config.torch_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = (load_model or load_stored_model)(model_uri, device=self.device)
        self.model.eval()
        self.codec = None
        if self.config.vae_uri:
            from v2w_core.models.vae import LatentCodec

            self.codec = LatentCodec.load(self.config.vae_uri, device=self.device)

    def run(self, chunk: EvalChunk) -> RolloutResult:
        return rollout_chunks(self.model, [chunk], self.config, device=self.device, codec=self.codec)[0]


def default_num_actors(config: EvalConfig, num_chunks: int) -> tuple[int, dict[str, float]]:
    """Actor count and per-actor resources from the cluster's free resources (GPU fractions if any)."""
    import ray

    free = ray.available_resources()
    if float(ray.cluster_resources().get("GPU", 0)) > 0:
        res = {"num_cpus": min(config.cpus_per_actor, 1.0), "num_gpus": config.gpus_per_actor}
        fit = int(float(free.get("GPU", 0)) / config.gpus_per_actor + 1e-9)
    else:
        res = {"num_cpus": config.cpus_per_actor, "num_gpus": 0.0}
        fit = int(float(free.get("CPU", 0)) / config.cpus_per_actor + 1e-9)
    n = config.num_actors if config.num_actors is not None else max(1, fit)
    return max(1, min(n, num_chunks)), res


def run_parallel_rollouts(
    model_uri: str, chunks: list[EvalChunk], config: EvalConfig, *, load_model: ModelLoader | None = None
) -> list[RolloutResult]:
    """Roll ``chunks`` out in Ray actors (each loads ``model_uri`` once, with ``load_model``: see
    :func:`v2w_core.eval.evaluate`); results in chunk order."""
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init()
    n, res = default_num_actors(config, len(chunks))
    logger.info("eval: %d rollout actors (%s) for %d chunks", n, res, len(chunks))
    actor_cls = ray.remote(RolloutWorker)
    actors = [actor_cls.options(**res).remote(model_uri, config, load_model) for _ in range(n)]
    try:
        pool = ActorPool(actors)
        by_id = {r.chunk_id: r for r in pool.map_unordered(lambda a, c: a.run.remote(c), chunks)}
    finally:
        for a in actors:
            ray.kill(a)
    return [by_id[c.chunk_id] for c in chunks]


__all__ = [
    "EvalChunk",
    "ModelLoader",
    "RolloutResult",
    "RolloutWorker",
    "chunk_seed",
    "default_num_actors",
    "load_chunks",
    "rollout_chunk",
    "rollout_chunks",
    "run_parallel_rollouts",
    "shuffled_actions",
    "split_fingerprint",
    "steering_probes",
]
