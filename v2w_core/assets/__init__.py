"""Weights that ship inside the package, addressed as ``asset://<name>`` wherever a model URI is taken.

``asset://tiny_unet3d_vizdoom`` is the demo's pretrained bidirectional base: a ``tiny_unet3d`` trained by
``pipelines/pretrain_base.py`` on action-free ViZDoom clips (its ``provenance.json`` says how, on what,
for how long). It lets the CPU demo spend its minutes on what Vid2World does — causalize and fine-tune
a pretrained video model — instead of learning video from nothing.
"""

from __future__ import annotations

from pathlib import Path

SCHEME = "asset://"
ROOT = Path(__file__).parent


def is_asset(uri: str) -> bool:
    return str(uri).startswith(SCHEME)


def resolve(uri: str) -> str:
    """The local directory of ``asset://<name>``; any other URI is returned unchanged."""
    if not is_asset(uri):
        return uri
    name = str(uri)[len(SCHEME):].strip("/")
    path = ROOT / name
    if not name or "/" in name or not (path / "config.json").is_file():
        known = sorted(p.name for p in ROOT.iterdir() if (p / "config.json").is_file())
        raise FileNotFoundError(f"{uri}: no such packaged model; packaged: {', '.join(known) or 'none'}")
    return str(path)


__all__ = ["ROOT", "SCHEME", "is_asset", "resolve"]
