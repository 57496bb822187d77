"""A model URI → what play needs: a readable model directory, its sampler settings, its held-out split.

Everything here runs *before* Ray Serve starts, so a wrong URI is one line to the user instead of a
replica that crashes in a log file. MLflow URIs (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
``runs:/…``) are downloaded once to a local directory that the deployment then loads (it runs on this
machine's Ray); local, ``s3://`` and ``asset://`` directories are read in place. A registered version also
brings the rollout config it was evaluated with (the pyfunc's ``rollout_config`` artifact) and its frozen
held-out split (tag ``v2w.eval_manifest``), which becomes the context picker's list, and, for a
latent-space model, the VAE its frames are decoded with (tag ``v2w.vae_uri``; ``--vae`` for a model that
is not registered).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from v2w_core.play.errors import PlayError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``model_dir`` is what :func:`v2w_core.tracking.load_model` reads."""

    uri: str  # what the user gave
    model_dir: str
    config: dict[str, Any]  # the saved WorldModelConfig (config.json), for the action space and sizes
    rollout: dict[str, Any] | None = None  # the registered sampler settings, if any
    eval_manifest: str | None = None  # the held-out split to pick contexts from, if known
    vae_uri: str | None = None  # a latent-space model's VAE (pixels <-> latents), if any
    label: str = ""  # shown on the page, e.g. "vid2world-tiny v3 (champion)"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _registered_version(uri: str, tracking_uri: str | None) -> tuple[Any, str]:
    """The ModelVersion a ``models:/`` URI names and a label for it."""
    from v2w_core.tracking.client import client

    rest = uri[len("models:/") :].strip("/")
    mlflow = client(tracking_uri)
    if "@" in rest:
        name, alias = rest.split("@", 1)
        try:
            mv = mlflow.get_model_version_by_alias(name, alias)
        except Exception:  # noqa: BLE001 - say which versions there are instead of MLflow's 404
            raise PlayError(_no_alias(mlflow, name, alias)) from None
        return mv, f"{name} v{mv.version} ({alias})"
    if "/" in rest:
        name, version = rest.split("/", 1)
        if version == "latest":
            versions = _versions(mlflow, name)
            if not versions:
                raise PlayError(f"no registered model named {name!r}: run `make demo` (or the pipeline) first")
            version = str(versions[-1].version)
        mv = mlflow.get_model_version(name, version)
        return mv, f"{name} v{mv.version}"
    raise PlayError(f"{uri}: a registered model URI is models:/<name>@<alias> or models:/<name>/<version>")


def _versions(mlflow: Any, name: str) -> list[Any]:
    return sorted(mlflow.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def _no_alias(mlflow: Any, name: str, alias: str) -> str:
    """Why ``models:/name@alias`` does not resolve, and what to play instead. The registry never gives
    ``champion`` to a version that fails its gates (e.g. not better than copying the last frame)."""
    versions = _versions(mlflow, name)
    if not versions:
        return f"no registered model named {name!r}: run `make demo` (or the pipeline) first"
    listed = ", ".join(
        f"v{v.version}" + (f" ({(v.tags or {}).get('v2w.promotion', '')[:60]})" if (v.tags or {}).get("v2w.promotion") else "")
        for v in versions[-3:]
    )  # fmt: skip
    return (f"{name} has no version with alias {alias!r} (versions: {listed}); play one by number, e.g. "
            f"--model models:/{name}/{versions[-1].version} or models:/{name}/latest")  # fmt: skip


def _check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a tracking server that is not there (MLflow's client retries for minutes)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answers: an auth proxy or an older server without /health; MLflow will tell
    except OSError as err:
        reason = getattr(err, "reason", None) or err
        raise PlayError(f"cannot reach the tracking server {tracking_uri}: {reason}") from None


def _read_config(model_dir: str) -> dict[str, Any]:
    from v2w_core import storage
    from v2w_core.models.io import CLASS_NAME, CONFIG_NAME

    try:
        raw = json.loads(storage.read_bytes(storage.join(model_dir, CONFIG_NAME)))
    except FileNotFoundError as err:
        raise PlayError(f"no model at {model_dir}: {_one_line(err)}") from None
    if raw.get("_class_name") != CLASS_NAME:
        raise PlayError(
            f"{model_dir} is not a saved world model (config.json _class_name {raw.get('_class_name')!r}): "
            "a plain diffusers UNet has no actions and no causal layers, so there is nothing to play"
        )
    return raw


def resolve_source(
    uri: str,
    *,
    tracking_uri: str | None = None,
    episodes: str | None = None,
    download_dir: str | Path | None = None,
    vae: str | None = None,
) -> ModelSource:
    """Resolve ``uri`` or raise :class:`PlayError` with one line saying what is wrong.

    ``episodes`` (a manifest URI) overrides the registered held-out split (and is the only source of
    contexts for an unregistered model); ``vae`` overrides the registered VAE of a latent-space model.
    """
    from v2w_core import assets
    from v2w_core.tracking.client import tracking_uri_or_env
    from v2w_core.tracking.models import is_mlflow_uri, resolve_model_dir
    from v2w_core.tracking.registry import EVAL_MANIFEST_TAG, VAE_TAG

    rollout: dict[str, Any] | None = None
    eval_manifest: str | None = None
    registered_vae: str | None = None
    label = uri
    if is_mlflow_uri(uri):
        tracking_uri = tracking_uri_or_env(tracking_uri)
        if not tracking_uri:
            raise PlayError(f"{uri} lives on a tracking server: set MLFLOW_TRACKING_URI or pass --tracking-uri")
        _check_reachable(tracking_uri)
        try:
            if uri.startswith("models:/"):
                mv, label = _registered_version(uri, tracking_uri)
                eval_manifest = (mv.tags or {}).get(EVAL_MANIFEST_TAG)
                registered_vae = (mv.tags or {}).get(VAE_TAG)
            dst = Path(download_dir) if download_dir else Path(tempfile.mkdtemp(prefix="v2w-play-model-"))
            model_dir = resolve_model_dir(uri, tracking_uri=tracking_uri, dst=dst)
        except PlayError:
            raise
        except Exception as err:  # noqa: BLE001 - MLflow raises many types; the user needs the one line
            raise PlayError(f"cannot load {uri} from {tracking_uri}: {_one_line(err)}") from None
        for path in sorted(dst.rglob("rollout_config*.json")):
            rollout = json.loads(path.read_text())
            break
    else:
        try:
            model_dir = assets.resolve(uri)
        except FileNotFoundError as err:
            raise PlayError(_one_line(err)) from None
    try:
        config = _read_config(model_dir)
    except PlayError:
        raise
    except Exception as err:  # noqa: BLE001 - storage errors (S3 credentials, bucket) as one line
        raise PlayError(f"cannot read {uri}: {_one_line(err)}") from None
    if config.get("action_space") is None:
        raise PlayError(
            f"{uri} has no action metadata (no action_space in its config.json): there are no actions to "
            "map to keys; give an action-conditioned world model"
        )
    if config.get("causal_mode", "none") == "none":
        raise PlayError(
            f"{uri} is a bidirectional model (causal_mode none): it cannot roll out frame by frame; "
            "causalize and fine-tune it with actions first (the pipeline's causalize and train stages)"
        )
    vae = vae or registered_vae
    channels = config.get("data_channels", 3)
    if channels != 3 and not vae:
        raise PlayError(
            f"{uri} makes {channels}-channel latents, not RGB frames, and names no VAE to decode them: pass "
            "--vae <its VAE directory> (registered latent versions carry it as tag v2w.vae_uri)"
        )
    if channels == 3 and vae:
        raise PlayError(f"{uri} makes RGB frames: it needs no VAE; leave out --vae {vae}")
    if vae:
        _check_vae(vae, channels)
    return ModelSource(uri=uri, model_dir=str(model_dir), config=config, rollout=rollout,
                       eval_manifest=episodes or eval_manifest, vae_uri=vae, label=label)  # fmt: skip


def _check_vae(vae: str, channels: int) -> None:
    """The VAE's config must exist and make the model's latent channels (read before anything is served)."""
    from v2w_core import storage

    try:
        raw = json.loads(storage.read_bytes(storage.join(vae, "config.json")))
    except Exception as err:  # noqa: BLE001 - missing file, S3 credentials, bad JSON: one line each
        raise PlayError(f"cannot read the VAE's {storage.join(vae, 'config.json')}: {_one_line(err)}; give "
                        "a diffusers AutoencoderKL directory (config.json + safetensors)") from None  # fmt: skip
    if raw.get("latent_channels") != channels:
        raise PlayError(f"the VAE at {vae} makes {raw.get('latent_channels')}-channel latents, the model "
                        f"{channels}: give the VAE the model was trained with")  # fmt: skip
