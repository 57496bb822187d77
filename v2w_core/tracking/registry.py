"""The model registry: register a world model as a pyfunc version, promote the champion, tag lineage.

Registry policy (:func:`promote_if_better`): every registered version carries its eval metrics, the eval
split fingerprint and the primary metric as version tags. Two gates come first, whatever the champion:

  * **degenerate outputs** (non-finite values or > 50 % saturated, :func:`v2w_core.output_health.
    degenerate_reason` on its ``gen_*`` metrics) → rejected;
  * **the copy-last-frame baseline** (:func:`copy_last_gate`): the version's primary metric must strictly
    beat ``copy_last_<primary>``, the same metric of the copy-the-last-context-frame predictor on the same
    eval chunks (``fvd`` when both values exist, else ``psnr_mean``); a version whose eval has no copy-last
    value (records older than the gate) is rejected too: re-evaluate it.

A rejected version gets no alias (one it held is removed), tag ``v2w.rejected=true`` and
``v2w.promotion="rejected: <reason with both numbers>"`` — it is never champion, not even when there is no
champion yet. Otherwise alias ``champion`` moves to the new version only when its primary metric is
strictly better than the current champion's *on the same split*; else the new version gets
``challenger``. The primary metric is ``fvd`` (lower is better) when both versions have it, else the
fallback ``psnr_mean`` (higher is better). A tie, a different split, or a missing metric keeps the
champion: nothing is overwritten silently, and every decision is written to the version's
``v2w.promotion`` tag.

The registered flavor is a pyfunc (:mod:`v2w_core.tracking.pyfunc`). Every version carries a description
(the model, what it was fine-tuned from, its eval metrics beside the baselines', :func:`describe_version`)
and the pyfunc a signature (:func:`~v2w_core.tracking.pyfunc.pyfunc_signature`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from v2w_core.tracking.client import client as mlflow_client
from v2w_core.tracking.client import tracking_uri_or_env
from v2w_core.tracking.models import find_world_model_dir, local_copy
from v2w_core.tracking.pyfunc import (
    PYFUNC_ARTIFACT_PATH,
    ROLLOUT_CONFIG_ARTIFACT,
    WORLD_MODEL_ARTIFACT,
    WorldModelPyfunc,
    pyfunc_signature,
)
from v2w_core.tracking.runs import TAG_SPLIT, start_run

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
REJECTED = "rejected"
#: Prefix of the copy-last-frame baseline's metrics (see :mod:`v2w_core.eval.evaluate`).
COPY_LAST_PREFIX = "copy_last_"
PRIMARY_METRIC = "fvd"
FALLBACK_METRIC = "psnr_mean"
#: Direction of each comparable metric: True when higher is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "fvd": False,
    "fid": False,
    "lpips_mean": False,
    "psnr_mean": True,
    "ssim_mean": True,
}
TAG_METRIC_PREFIX = "v2w.metric."
TAG_PRIMARY = "v2w.primary_metric"
TAG_PROMOTION = "v2w.promotion"
TAG_REJECTED = "v2w.rejected"
TAG_DEGENERATE = "v2w.degenerate"


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote_if_better` did. ``decision`` is ``"champion"``, ``"challenger"`` or
    ``"rejected"`` (failed a gate: degenerate outputs, or does not beat the copy-last-frame baseline)."""

    name: str
    version: str
    decision: str
    metric: str | None
    value: float | None
    champion_version: str | None  # the champion before this decision (None: there was none)
    champion_value: float | None
    reason: str
    #: The copy-last-frame baseline's value of ``metric`` on the same split (None: not compared).
    copy_last_value: float | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == CHAMPION


def register_world_model(
    model_uri: str,
    name: str,
    *,
    metrics: Mapping[str, float],
    split_id: str,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str = "vid2world",
    rollout_config: Any = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log the world model at ``model_uri`` as a pyfunc under ``run_id`` (a new "register" run if None)
    and create a registry version carrying ``metrics`` and ``split_id`` as tags; returns the version."""
    import mlflow.pyfunc

    from v2w_core.diffusion.rollout import RolloutConfig

    tracking_uri = tracking_uri_or_env(tracking_uri)
    if not tracking_uri:
        raise ValueError("register_world_model needs a tracking_uri (or MLFLOW_TRACKING_URI)")
    client = mlflow_client(tracking_uri)
    own_run = run_id is None
    if own_run:
        run_id = start_run(
            tracking_uri, experiment, run_name=f"register:{name}", tags={"v2w.stage": "register"}
        )
    work = Path(tempfile.mkdtemp(prefix="v2w-register-"))
    try:
        wm_dir = local_copy(model_uri, work / "world_model")
        rc = rollout_config if rollout_config is not None else RolloutConfig()
        rc_path = work / "rollout_config.json"
        rc_path.write_text(json.dumps(rc.model_dump(mode="json"), indent=2))
        wm_config = json.loads((find_world_model_dir(wm_dir) / "config.json").read_text())
        with warnings.catch_warnings():
            # An input example would be rolled out at registration to check it: minutes for a large model.
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            mlflow.pyfunc.save_model(
                path=str(work / "pyfunc"),
                python_model=WorldModelPyfunc(),
                artifacts={WORLD_MODEL_ARTIFACT: str(wm_dir), ROLLOUT_CONFIG_ARTIFACT: str(rc_path)},
                pip_requirements=["vid2world", "torch", "diffusers", "safetensors", "mlflow"],
                signature=pyfunc_signature(wm_config),
            )
        client.log_artifacts(run_id, str(work / "pyfunc"), PYFUNC_ARTIFACT_PATH)
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST: first version of this name
            client.create_registered_model(name, description="vid2world world models (pyfunc rollout)")
        version_tags = {
            TAG_SPLIT: split_id,
            "v2w.source_model_uri": model_uri,
            **{f"{TAG_METRIC_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()},
            **dict(tags or {}),
        }
        description = describe_version(
            model_uri, wm_config, metrics=metrics, split_id=split_id,
            lineage=_lineage(client, run_id, model_uri), parameters=_parameter_count(wm_dir),
        )  # fmt: skip
        mv = client.create_model_version(
            name, source=f"runs:/{run_id}/{PYFUNC_ARTIFACT_PATH}", run_id=run_id, tags=version_tags,
            description=description,
        )  # fmt: skip
        if own_run:
            client.set_terminated(run_id, "FINISHED")
    except BaseException:
        if own_run:
            client.set_terminated(run_id, "FAILED")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("registered %s version %s (run %s)", name, mv.version, run_id)
    return str(mv.version)


def _parameter_count(model_dir: Path) -> int | None:
    """Parameters in the safetensors files under ``model_dir``, from their headers (nothing loaded)."""
    import struct

    total = 0
    try:
        for f in sorted(find_world_model_dir(model_dir).glob("*.safetensors")):
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total or None


def _lineage(client: Any, run_id: str | None, model_uri: str) -> dict[str, str]:
    """Best effort, through MLflow: the training run that exported ``model_uri`` (an EMA export is
    ``<export>_ema``), what it fine-tuned from, and the base model of the pipeline it ran in."""
    out: dict[str, str] = {}
    export = model_uri.rstrip("/").removesuffix("_ema")
    if run_id is None or "'" in export:
        return out
    try:
        exp_id = client.get_run(run_id).info.experiment_id
        runs = client.search_runs([exp_id], f"params.output_uri = '{export}'", max_results=1,
                                  order_by=["attributes.start_time DESC"])  # fmt: skip
        if not runs:
            return out
        train = runs[0]
        out["train_run"] = train.info.run_id
        out["fine_tuned_from"] = train.data.params.get("model.base_uri", "")
        out["steps"] = train.data.params.get("max_steps", "")
        stage = train.data.tags.get("mlflow.parentRunId")
        pipeline = client.get_run(stage).data.tags.get("mlflow.parentRunId") if stage else None
        if pipeline:
            query = f"tags.`mlflow.parentRunId` = '{pipeline}' and tags.`v2w.stage` = 'base'"
            base = client.search_runs([exp_id], query, max_results=1)
            if base:
                out["pretrained_base"] = base[0].data.tags.get("output.model", "")
    except Exception as err:  # noqa: BLE001 - a description without lineage beats a failed registration
        logger.info("registry: lineage of %s not found (%s)", model_uri, str(err).splitlines()[0][:200])
    return {k: v for k, v in out.items() if v}


def describe_version(
    model_uri: str,
    wm_config: Mapping[str, Any],
    *,
    metrics: Mapping[str, float],
    split_id: str,
    lineage: Mapping[str, str] | None = None,
    parameters: int | None = None,
) -> str:
    """A model version's description (Markdown, shown by the registry UI): what the model is, what it
    was fine-tuned from, its eval metrics beside the copy-last-frame and untrained-base baselines."""
    lineage = lineage or {}
    space = wm_config.get("action_space")
    actions = f"{space['type']} actions (dim {space['dim']})" if space else "no actions"
    size = wm_config.get("sample_size") or []
    frames = "×".join(str(x) for x in ([size, size] if isinstance(size, int) else size))
    channels = wm_config.get("data_channels", "?")
    what = (
        f"Vid2World world model: {wm_config.get('family', '?')} video diffusion model, causal mode "
        f"{wm_config.get('causal_mode', '?')}, {actions}, {frames or '?'}×{channels} frames"
    )
    lines = [what + (f", {parameters / 1e6:.2f} M parameters." if parameters else ".")]
    if lineage.get("fine_tuned_from"):
        base = f"Base: fine-tuned from `{lineage['fine_tuned_from']}`"
        if lineage.get("steps"):
            base += f" for {lineage['steps']} steps"
        if lineage.get("train_run"):
            base += f" (train run {lineage['train_run']})"
        if lineage.get("pretrained_base"):
            base += f"; pretrained base `{lineage['pretrained_base']}`"
        lines.append(base + ".")
    summary = []
    for name in HIGHER_IS_BETTER:
        value = metrics.get(name)
        if value is None or not math.isfinite(float(value)):
            continue
        baselines = [
            f"{label} {float(metrics[prefix + name]):.4g}"
            for label, prefix in (("copy-last", COPY_LAST_PREFIX), ("untrained base", "untrained_"))
            if prefix + name in metrics
        ]
        summary.append(f"{name} {float(value):.4g}" + (f" ({', '.join(baselines)})" if baselines else ""))
    lines.append(
        f"Eval (split `{split_id}`): {'; '.join(summary) or 'no comparable metrics'}. "
        f"All eval metrics are the version's `{TAG_METRIC_PREFIX}*` tags."
    )
    lines.append(f"Weights: `{model_uri}`.")
    return "\n\n".join(lines)


def version_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """Metrics stored on a model version's tags."""
    out = {}
    for k, v in tags.items():
        if k.startswith(TAG_METRIC_PREFIX):
            try:
                out[k[len(TAG_METRIC_PREFIX) :]] = float(v)
            except ValueError:
                continue
    return out


def choose_primary(new: Mapping[str, float], champion: Mapping[str, float]) -> str | None:
    """``fvd`` when both have a finite one, else ``psnr_mean`` when both do, else None (not comparable)."""
    for name in (PRIMARY_METRIC, FALLBACK_METRIC):
        a, b = new.get(name), champion.get(name)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            return name
    return None


def is_better(metric: str, new: float, old: float) -> bool:
    """Strictly better in the metric's direction (a tie is not better)."""
    return new > old if HIGHER_IS_BETTER[metric] else new < old


@dataclass(frozen=True)
class GateResult:
    """:func:`copy_last_gate`'s verdict: the metric compared, both values, and why it failed (or None)."""

    metric: str | None
    value: float | None
    copy_last_value: float | None
    reason: str | None

    @property
    def passed(self) -> bool:
        return self.reason is None


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def copy_last_gate(metrics: Mapping[str, float]) -> GateResult:
    """Does the primary metric strictly beat the copy-last-frame baseline's value of the same metric?

    ``fvd`` vs ``copy_last_fvd`` when both are finite, else ``psnr_mean`` vs ``copy_last_psnr_mean``. Both
    come from the same evaluation (same chunks), so they are on the same split by construction.
    """
    for name in (PRIMARY_METRIC, FALLBACK_METRIC):
        new, base = metrics.get(name), metrics.get(COPY_LAST_PREFIX + name)
        if _finite(new) and _finite(base):
            assert new is not None and base is not None
            if is_better(name, new, base):
                return GateResult(name, new, base, None)
            direction = "higher" if HIGHER_IS_BETTER[name] else "lower"
            return GateResult(
                name, new, base,
                f"{name} {new:.6g} does not beat the copy-last-frame baseline's {base:.6g} on the same split "
                f"({direction} is better; a tie does not beat it)",
            )  # fmt: skip
    if not any(k.startswith(COPY_LAST_PREFIX) for k in metrics):
        return GateResult(None, None, None, "no copy-last baseline in its eval; re-evaluate")
    value = metrics.get(FALLBACK_METRIC)
    return GateResult(
        FALLBACK_METRIC if value is not None else None, value, metrics.get(COPY_LAST_PREFIX + FALLBACK_METRIC),
        f"no finite primary metric with its copy-last value ({PRIMARY_METRIC}/{COPY_LAST_PREFIX}{PRIMARY_METRIC}"
        f" or {FALLBACK_METRIC}/{COPY_LAST_PREFIX}{FALLBACK_METRIC}): {FALLBACK_METRIC}={value!r}",
    )  # fmt: skip


def promote_if_better(name: str, version: str | int, *, tracking_uri: str | None = None) -> PromotionResult:
    """Reject ``version`` if it fails a gate (degenerate outputs, or not beating the copy-last-frame
    baseline); else give it alias ``champion`` if it beats the current champion on the same split, else
    ``challenger``. See the module docstring for the policy. Reads metrics and split from version tags."""
    from v2w_core.output_health import degenerate_reason

    client = mlflow_client(tracking_uri)
    version = str(version)
    mv = client.get_model_version(name, version)
    new_metrics, new_split = version_metrics(mv.tags), mv.tags.get(TAG_SPLIT)
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - no alias yet
        champ = None
    degenerate = degenerate_reason(new_metrics)
    gate = copy_last_gate(new_metrics)
    client.set_model_version_tag(name, version, TAG_DEGENERATE, "true" if degenerate else "false")

    def result(decision: str, metric: str | None, champ_value: float | None, reason: str) -> PromotionResult:
        client.set_model_version_tag(name, version, TAG_PROMOTION, f"{decision}: {reason}"[:5000])
        client.set_model_version_tag(name, version, TAG_REJECTED, "true" if decision == REJECTED else "false")
        if metric:
            client.set_model_version_tag(name, version, TAG_PRIMARY, metric)
        res = PromotionResult(
            name=name, version=version, decision=decision, metric=metric,
            value=new_metrics.get(metric) if metric else None,
            champion_version=str(champ.version) if champ is not None else None,
            champion_value=champ_value, reason=reason, copy_last_value=gate.copy_last_value,
        )  # fmt: skip
        log = logger.warning if decision == REJECTED else logger.info
        log("registry %s v%s -> %s (%s)", name, version, decision, reason)
        return res

    def decide(decision: str, metric: str | None, champ_value: float | None, reason: str) -> PromotionResult:
        client.set_registered_model_alias(name, decision, version)
        return result(decision, metric, champ_value, reason)

    if degenerate or not gate.passed:
        reason = "; ".join(
            r for r in (f"degenerate outputs: {degenerate}" if degenerate else None, gate.reason) if r
        )
        for alias in (CHAMPION, CHALLENGER):  # a rejected version holds no alias
            if alias in (mv.aliases or []):
                client.delete_registered_model_alias(name, alias)
        return result(REJECTED, gate.metric, None, reason + "; never champion")
    beats_copy = (
        f"{gate.metric} {gate.value:.6g} beats the copy-last-frame baseline's {gate.copy_last_value:.6g}"
    )
    if champ is None:
        metric = choose_primary(new_metrics, new_metrics)
        return decide(CHAMPION, metric, None, f"no champion yet; {beats_copy}")
    if str(champ.version) == version:
        return decide(CHAMPION, None, None, f"already the champion; {beats_copy}")
    champ_metrics, champ_split = version_metrics(champ.tags), champ.tags.get(TAG_SPLIT)
    if not new_split or new_split != champ_split:
        return decide(
            CHALLENGER, None, None,
            f"eval split {new_split!r} differs from the champion's {champ_split!r}: not comparable; "
            "re-evaluate both on the same split",
        )  # fmt: skip
    metric = choose_primary(new_metrics, champ_metrics)
    if metric is None:
        return decide(
            CHALLENGER, None, None, f"no common primary metric ({PRIMARY_METRIC} or {FALLBACK_METRIC})"
        )
    new_v, old_v = new_metrics[metric], champ_metrics[metric]
    direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    if is_better(metric, new_v, old_v):
        return decide(
            CHAMPION,
            metric,
            old_v,
            f"{metric} {new_v:.6g} beats champion v{champ.version}'s {old_v:.6g} ({direction} is better); "
            f"{beats_copy}",
        )
    return decide(
        CHALLENGER,
        metric,
        old_v,
        f"{metric} {new_v:.6g} does not beat champion v{champ.version}'s {old_v:.6g} ({direction} is better; a tie keeps the champion)",
    )


def register_and_promote(
    model_uri: str,
    name: str,
    *,
    metrics: Mapping[str, float],
    split_id: str,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str = "vid2world",
    rollout_config: Any = None,
) -> PromotionResult:
    """The register stage in one call: :func:`register_world_model` then :func:`promote_if_better`."""
    version = register_world_model(
        model_uri, name, metrics=metrics, split_id=split_id, tracking_uri=tracking_uri, run_id=run_id,
        experiment=experiment, rollout_config=rollout_config,
    )  # fmt: skip
    return promote_if_better(name, version, tracking_uri=tracking_uri)


#: Model-version tags: the frozen held-out split the version was evaluated on, and the VAE that decodes a
#: latent-space version's frames (absent for pixel models). ``v2w-play`` reads both.
EVAL_MANIFEST_TAG = "v2w.eval_manifest"
VAE_TAG = "v2w.vae_uri"


def tag_data_lineage(
    tracking_uri: str, name: str, version: str, *, model_uri: str, manifest_uri: str, eval_manifest_uri: str,
    vae_uri: str | None = None,
) -> None:
    """Record on the model version what it was trained on, so retraining can find "episodes added since",
    the frozen held-out split it was evaluated on, so retraining compares like for like, and (latent
    models) the VAE its frames are decoded with, so a player can show them."""
    from v2w_core.data.manifest import Manifest

    created = Manifest.read(manifest_uri).table.column("created_at").to_pylist()
    client = mlflow_client(tracking_uri)
    client.set_model_version_tag(name, version, "v2w.data_manifest", manifest_uri)
    client.set_model_version_tag(name, version, "v2w.data_cutoff", max(created).isoformat())
    client.set_model_version_tag(name, version, "v2w.model_uri", model_uri)
    client.set_model_version_tag(name, version, EVAL_MANIFEST_TAG, eval_manifest_uri)
    if vae_uri:
        client.set_model_version_tag(name, version, VAE_TAG, vae_uri)


def champion_version(name: str, *, tracking_uri: str | None = None) -> Any:
    """The registered version holding alias ``champion`` (MLflow's ModelVersion); raises when there is none."""
    return mlflow_client(tracking_uri).get_model_version_by_alias(name, CHAMPION)


def model_versions(name: str, *, tracking_uri: str | None = None) -> list[Any]:
    """Every registered version of ``name`` (MLflow's ModelVersion objects, with their tags)."""
    return list(mlflow_client(tracking_uri).search_model_versions(f"name='{name}'"))


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "COPY_LAST_PREFIX",
    "EVAL_MANIFEST_TAG",
    "FALLBACK_METRIC",
    "HIGHER_IS_BETTER",
    "PRIMARY_METRIC",
    "REJECTED",
    "TAG_DEGENERATE",
    "TAG_METRIC_PREFIX",
    "TAG_PRIMARY",
    "TAG_PROMOTION",
    "TAG_REJECTED",
    "VAE_TAG",
    "GateResult",
    "PromotionResult",
    "champion_version",
    "choose_primary",
    "copy_last_gate",
    "describe_version",
    "is_better",
    "model_versions",
    "promote_if_better",
    "register_and_promote",
    "register_world_model",
    "tag_data_lineage",
    "version_metrics",
]
