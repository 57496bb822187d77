"""The one place where an MLflow client is made: :func:`client` (tracking and registry on the same server)."""

from __future__ import annotations

import os
from typing import Any


def tracking_uri_or_env(tracking_uri: str | None = None) -> str | None:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI`` (None when neither is set)."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")


def client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` whose tracking and registry URI are ``tracking_uri`` (default: the environment's)."""
    from mlflow import MlflowClient

    uri = tracking_uri_or_env(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
