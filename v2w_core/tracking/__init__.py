"""Everything that talks to MLflow: runs, buffered metric logging, model URIs, the registry, the pyfunc.

* client.py — :func:`client`, the one place an ``MlflowClient`` is made.
* runs.py — experiments (:func:`ensure_experiment`), runs (:func:`start_run`, :func:`end_run`), params
  (:func:`flatten_params`, :func:`environment_info`), artifacts, the evaluation's run (:func:`log_evaluation`).
* buffer.py — :class:`BufferedMlflowLogger`, training's non-blocking metric logging that outlives outages.
* models.py — model URIs (local, ``s3://``, ``asset://``, ``runs:/``, ``models:/``) and :func:`load_model`,
  the one loader for all of them.
* pyfunc.py — the registered flavor (:class:`WorldModelPyfunc`) and its signature.
* registry.py — registration, the copy-last / degenerate gates, champion promotion, data lineage tags.

Layering: this package sits above models, diffusion and data and below eval, train and the pipelines. Eval
and tracking do not import each other: :func:`v2w_core.eval.evaluate` returns an ``EvalResult`` and its
caller (the evaluate stage, retraining) logs it with :func:`log_evaluation`, which reads it by attribute.
"""

from v2w_core.tracking.buffer import DROPPED_BATCHES_METRIC, DROPPED_VALUES_METRIC, BufferedMlflowLogger
from v2w_core.tracking.client import client
from v2w_core.tracking.models import (
    find_world_model_dir,
    is_mlflow_uri,
    load_model,
    resolve_model_dir,
)
from v2w_core.tracking.pyfunc import WorldModelPyfunc, pyfunc_signature
from v2w_core.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    COPY_LAST_PREFIX,
    EVAL_MANIFEST_TAG,
    FALLBACK_METRIC,
    HIGHER_IS_BETTER,
    PRIMARY_METRIC,
    REJECTED,
    TAG_DEGENERATE,
    TAG_METRIC_PREFIX,
    TAG_PRIMARY,
    TAG_PROMOTION,
    TAG_REJECTED,
    VAE_TAG,
    GateResult,
    PromotionResult,
    champion_version,
    choose_primary,
    copy_last_gate,
    describe_version,
    is_better,
    model_versions,
    promote_if_better,
    register_and_promote,
    register_world_model,
    tag_data_lineage,
    version_metrics,
)
from v2w_core.tracking.runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TAG_SPLIT,
    end_run,
    ensure_experiment,
    environment_info,
    finish_stage_run,
    flatten_params,
    log_artifacts,
    log_evaluation,
    set_run_tag,
    start_pipeline_run,
    start_run,
    start_stage_run,
    terminate_run,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "COPY_LAST_PREFIX",
    "DROPPED_BATCHES_METRIC",
    "DROPPED_VALUES_METRIC",
    "EVAL_MANIFEST_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "FALLBACK_METRIC",
    "HIGHER_IS_BETTER",
    "PRIMARY_METRIC",
    "REJECTED",
    "TAG_DEGENERATE",
    "TAG_METRIC_PREFIX",
    "TAG_PRIMARY",
    "TAG_PROMOTION",
    "TAG_REJECTED",
    "TAG_SPLIT",
    "VAE_TAG",
    "BufferedMlflowLogger",
    "GateResult",
    "PromotionResult",
    "WorldModelPyfunc",
    "champion_version",
    "choose_primary",
    "client",
    "copy_last_gate",
    "describe_version",
    "end_run",
    "ensure_experiment",
    "environment_info",
    "find_world_model_dir",
    "finish_stage_run",
    "flatten_params",
    "is_better",
    "is_mlflow_uri",
    "load_model",
    "log_artifacts",
    "log_evaluation",
    "model_versions",
    "promote_if_better",
    "pyfunc_signature",
    "register_and_promote",
    "register_world_model",
    "resolve_model_dir",
    "set_run_tag",
    "start_pipeline_run",
    "start_run",
    "start_stage_run",
    "tag_data_lineage",
    "terminate_run",
    "version_metrics",
]
