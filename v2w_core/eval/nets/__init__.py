"""The published metric networks (I3D for FVD, Inception for FID, LPIPS) as torch modules.

Each network module exposes ``convert() -> (state_dict, metadata)`` (reads the package files once, see
:mod:`.sources`) and ``build(state) -> nn.Module`` (the network with those weights, in eval mode). Weights
travel only as safetensors, converted by :mod:`v2w_core.eval.weights`.
"""
