"""The registered flavor: a pyfunc (:class:`WorldModelPyfunc`) that rolls the world model out.

Its weights travel as the safetensors directory in the model's artifacts (:data:`WORLD_MODEL_ARTIFACT`),
beside the rollout config it was evaluated with (:data:`ROLLOUT_CONFIG_ARTIFACT`); the pickled
python_model object holds no weights, only the class reference (versions registered before this module
existed name ``v2w_core.tracking.WorldModelPyfunc``, which the package still exports). Its signature:
:func:`pyfunc_signature`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from v2w_core.tracking.models import find_world_model_dir, load_model

PYFUNC_ARTIFACT_PATH = "world_model_pyfunc"
WORLD_MODEL_ARTIFACT = "world_model"
ROLLOUT_CONFIG_ARTIFACT = "rollout_config"

try:  # the class must exist at import time for MLflow to unpickle it; mlflow is a core dependency
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object  # type: ignore[assignment,misc]


class WorldModelPyfunc(_PythonModel):  # type: ignore[misc,valid-type]
    """Loads the safetensors world model from the registered model's artifacts and rolls it out.

    ``predict`` input: a dict with ``context`` (uint8 (B, K, H, W, 3)) and ``actions`` (recorded,
    (B, ≥K+N−1, ...)); params ``num_frames`` and ``seed`` (ints). Output: uint8 frames (B, N, H, W, 3).
    Sampler settings are the rollout config stored at registration. The registered signature
    (:func:`pyfunc_signature`) checks exactly this; the class itself also takes unbatched arrays and
    ``num_frames`` / ``seed`` inside the dict (versions registered before the signature existed).
    """

    # MLflow 3 turns a predict type hint into input-schema validation that only understands list[...]
    # inputs; ours is one dict of arrays, validated in predict itself.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from v2w_core.diffusion.rollout import RolloutConfig

        self.model = load_model(str(find_world_model_dir(context.artifacts[WORLD_MODEL_ARTIFACT]))).eval()
        raw = json.loads(Path(context.artifacts[ROLLOUT_CONFIG_ARTIFACT]).read_text())
        self.rollout_config = RolloutConfig.from_dict(raw, source="registered rollout_config.json")

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        """``num_frames`` and ``seed`` come from ``params`` (the signature's) or, unchecked, from the dict."""
        import numpy as np
        import torch

        from v2w_core.data.clips import normalize_frames, to_uint8
        from v2w_core.diffusion.rollout import rollout

        if not isinstance(model_input, Mapping) or "context" not in model_input:
            raise ValueError(
                "predict expects a dict with 'context', 'actions', 'num_frames' and optional 'seed'"
            )
        frames = np.asarray(model_input["context"], dtype=np.uint8)
        actions = model_input.get("actions")
        batched = frames.ndim == 5
        if not batched:
            frames = frames[None]
            actions = None if actions is None else np.asarray(actions)[None]

        def setting(key: str, default: int) -> int:
            value = model_input[key] if key in model_input else (params or {}).get(key, default)
            return int(np.asarray(value).reshape(-1)[0])

        num_frames, seed = setting("num_frames", 1), setting("seed", 0)
        ctx = normalize_frames(torch.from_numpy(frames).permute(0, 1, 4, 2, 3)).float()
        act = (
            None
            if actions is None or self.model.action_encoder is None
            else torch.from_numpy(np.asarray(actions))
        )
        gen = torch.Generator().manual_seed(seed)
        out = rollout(self.model, ctx, act, num_frames, self.rollout_config, generator=gen)
        result = np.stack([to_uint8(o.numpy()) for o in out])
        return result if batched else result[0]


def pyfunc_signature(wm_config: Mapping[str, Any]) -> Any:
    """The pyfunc's signature, from the saved model's config: ``context`` uint8 (B, K, H, W, C) and, with
    an action space, ``actions`` (B, T, dim) float32 or (B, T) int64 ids in; uint8 (B, N, H, W, C) out;
    params ``num_frames`` and ``seed``. None when the config lacks the frame size."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    size, channels = wm_config.get("sample_size"), wm_config.get("data_channels")
    if size is None or channels is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    frames = (-1, -1, int(h), int(w), int(channels))
    inputs = [TensorSpec(np.dtype(np.uint8), frames, "context")]
    space = wm_config.get("action_space")
    if space and space["type"] == "discrete":
        inputs.append(TensorSpec(np.dtype(np.int64), (-1, -1), "actions"))
    elif space:
        inputs.append(TensorSpec(np.dtype(np.float32), (-1, -1, int(space["dim"])), "actions"))
    return ModelSignature(
        inputs=Schema(inputs), outputs=Schema([TensorSpec(np.dtype(np.uint8), frames, "frames")]),
        params=ParamSchema([ParamSpec("num_frames", "long", 1), ParamSpec("seed", "long", 0)]),
    )  # fmt: skip


__all__ = [
    "PYFUNC_ARTIFACT_PATH",
    "ROLLOUT_CONFIG_ARTIFACT",
    "WORLD_MODEL_ARTIFACT",
    "WorldModelPyfunc",
    "pyfunc_signature",
]
