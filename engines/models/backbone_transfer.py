"""Start one network's ResNet backbone from another network trained here (``engines train --init-backbone``).

Every network in the registry that is built on a torchvision ResNet keeps that ResNet's modules under its own
prefix (BFFN: ``stem.0``/``stem.1``/``layer1``…; GR: ``backbone.0``…``backbone.7``; the smp baselines:
``net.encoder.``). :func:`backbone_state` reads them into torchvision's own names (``conv1``, ``bn1``,
``layer1``…), and :func:`load_backbone` writes such a state into any other network of the same ResNet family,
adapting the input channels of the first convolution (RGB → grey by summing its weights; grey → RGB by sharing
them out).

Example::

    donor = load_model(resolve_weights("gr-neu-seg"))
    report = load_backbone(bffn, backbone_state(donor))   # {"loaded": 122, "adapted": ["conv1.weight"], ...}
"""
from __future__ import annotations

from engines.errors import EnginesError

# torchvision name -> where each registered network keeps it (first prefix that exists in the state dict wins)
_PREFIXES: dict[str, tuple[str, ...]] = {
    "conv1.": ("stem.0.", "backbone.0.", "net.encoder.conv1.", "net.backbone.conv1.", "conv1."),
    "bn1.": ("stem.1.", "backbone.1.", "net.encoder.bn1.", "net.backbone.bn1.", "bn1."),
    "layer1.": ("layer1.", "backbone.4.", "net.encoder.layer1.", "net.backbone.layer1."),
    "layer2.": ("layer2.", "backbone.5.", "net.encoder.layer2.", "net.backbone.layer2."),
    "layer3.": ("layer3.", "backbone.6.", "net.encoder.layer3.", "net.backbone.layer3."),
    "layer4.": ("layer4.", "backbone.7.", "net.encoder.layer4.", "net.backbone.layer4."),
}


class BackboneTransferError(EnginesError, ValueError):
    """The two networks share no ResNet backbone, or their backbones differ in shape."""


def _prefix_in(state: dict, canonical: str) -> str | None:
    probe = "weight" if canonical.startswith(("conv1", "bn1")) else "0.conv1.weight"
    for prefix in _PREFIXES[canonical]:
        if prefix + probe in state:
            return prefix
    return None


def backbone_state(model) -> dict:
    """The ResNet backbone of ``model`` as a state dict in torchvision's names (tensors are shared, not copied)."""
    state = model.state_dict()
    out = {}
    for canonical in _PREFIXES:
        prefix = _prefix_in(state, canonical)
        if prefix is None:
            continue
        for key, value in state.items():
            if key.startswith(prefix):
                out[canonical + key[len(prefix):]] = value
    if not any(k.startswith("layer4.") for k in out):
        raise BackboneTransferError(f"{type(model).__name__} has no ResNet backbone that can be transferred")
    return out


def adapt_first_conv(weight, in_channels: int):
    """The first convolution's weight ``(64, C, k, k)`` for ``in_channels`` inputs: summed over colour channels
    for a grey input (a grey pixel fed to all three channels gives the same response), or shared out equally."""
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        return weight.repeat(1, in_channels, 1, 1) / in_channels
    raise BackboneTransferError(f"cannot adapt a first convolution with {have} input channels to {in_channels}")


def load_backbone(model, source: dict) -> dict:
    """Copy ``source`` (from :func:`backbone_state`) into ``model``'s backbone in place. Returns what was
    loaded: ``{"loaded": n_tensors, "adapted": [names], "skipped": [backbone parts this network lacks]}``.

    Raises :class:`BackboneTransferError` when a backbone tensor is missing from the source or differs in shape
    (another ResNet depth, say): a partial start would be silent and misleading."""
    import torch

    target = model.state_dict()
    updates, adapted, skipped = {}, [], []
    for canonical in _PREFIXES:
        prefix = _prefix_in(target, canonical)
        if prefix is None:
            skipped.append(canonical.rstrip("."))
            continue
        for key in [k for k in target if k.startswith(prefix)]:
            name = canonical + key[len(prefix):]
            if name not in source:
                raise BackboneTransferError(
                    f"backbone tensor {name} of this network is not in the source: use a source trained on the same "
                    "ResNet depth (--backbone)")
            value = source[name]
            if name == "conv1.weight":
                new = adapt_first_conv(value, target[key].shape[1])
                if new is not value:
                    adapted.append(name)
                value = new
            if tuple(value.shape) != tuple(target[key].shape):
                raise BackboneTransferError(
                    f"backbone tensor {name} is {tuple(value.shape)} in the source and {tuple(target[key].shape)} "
                    "here: use a source trained on the same ResNet depth (--backbone)")
            updates[key] = value.to(target[key].dtype)
    if not any(k.startswith("layer4") for k in (n for n in source)) or not updates:
        raise BackboneTransferError("the source holds no ResNet backbone layers that fit this network")
    with torch.no_grad():
        for key, value in updates.items():
            target[key].copy_(value)
    return {"loaded": len(updates), "adapted": adapted, "skipped": skipped}


def backbone_parameters(model) -> set[str]:
    """The names of ``model``'s parameters that belong to its ResNet backbone (for a learning rate of their own,
    ``engines train --backbone-lr``); empty when it has none."""
    state = model.state_dict()
    prefixes = [p for p in (_prefix_in(state, c) for c in _PREFIXES) if p is not None]
    return {name for name, _ in model.named_parameters() if name.startswith(tuple(prefixes))} if prefixes else set()
