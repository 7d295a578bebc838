"""Pretrained weights for the frontends Keras publishes none for, converted once.

Keras has no ImageNet file for ResNet18, ResNet34 or DenseNet161. This package
converts other libraries' weights into the ``.weights.h5`` file that
``build_frontend(name, weights=PATH)`` (``--frontend-weights PATH``) loads:

- a timm / torchvision state dict, ``.safetensors`` (``semseg_suite.weights.timm``):
  ResNet18, ResNet34, DenseNet121, DenseNet161, DenseNet169, DenseNet201;
- a keras-hub ``ResNetBackbone`` preset (``semseg_suite.weights.keras_hub``):
  ResNet18, ResNet34.

Command line (SOURCE: a ``.safetensors`` file, a keras-hub preset folder, or
``timm:NAME`` / ``keras-hub:PRESET`` to download)::

    python -m semseg_suite.weights convert SOURCE --frontend NAME --output FILE.weights.h5

``--frontend-weights timm:NAME`` or ``keras-hub:PRESET`` (``frontend_weights=`` in
Python) downloads through huggingface_hub / keras-hub, converts once into
``cache_dir()`` and loads the cached file from then on; offline, it fails within
about a second saying how to convert a local copy (``semseg_suite.weights.hub``).
"""

from __future__ import annotations

import logging
import os
import pathlib

from semseg_suite.data.core import cache_root
from semseg_suite.weights import hub
from semseg_suite.weights import keras_hub as keras_hub_source
from semseg_suite.weights import timm as timm_source
from semseg_suite.weights.common import APPLICATIONS, SUFFIX, WeightsConversionError, target_model, write_weights

log = logging.getLogger("semseg_suite")

# Source -> frontends it converts to.
SUPPORTED = {hub.TIMM: tuple(timm_source.ARCHITECTURES), hub.KERAS_HUB: tuple(keras_hub_source.DEPTHS)}


def cache_dir() -> pathlib.Path:
    """Where converted hub weights are kept: ``<suite cache>/weights`` (``$SEMSEG_SUITE_CACHE``)."""
    return cache_root() / "weights"


def is_hub_spec(weights) -> bool:
    """Whether ``weights`` is a ``timm:NAME`` or ``keras-hub:PRESET`` string."""
    return hub.parse(weights) is not None


def _source_kind(source: str) -> tuple[str, str, bool]:
    """``(scheme, name or path, downloaded)`` of a ``convert`` source."""
    spec = hub.parse(source)
    if spec is not None:
        return (*spec, True)
    if os.path.isdir(source):
        return hub.KERAS_HUB, source, False
    if os.path.isfile(source):
        return hub.TIMM, source, False
    raise FileNotFoundError(
        f"{source}: no such .safetensors file or keras-hub preset folder (or use timm:NAME / keras-hub:PRESET)"
    )


def _check_supported(scheme: str, frontend: str, source: str) -> None:
    if frontend not in SUPPORTED[scheme]:
        raise WeightsConversionError(
            f"{source}: {scheme} weights convert to {', '.join(SUPPORTED[scheme])}, not {frontend!r}"
        )


def convert(source, frontend: str, output) -> pathlib.Path:
    """Converts pretrained weights into ``frontend``'s ``.weights.h5`` file.

    Args:
        source: a timm/torchvision ``.safetensors`` state dict, a keras-hub
            ``ResNetBackbone`` preset folder, ``"timm:NAME"`` (the Hugging Face
            repository ``timm/NAME``) or ``"keras-hub:PRESET"`` (a keras-hub preset
            name or handle); the last two are downloaded when not cached.
        frontend: the registered frontend name, e.g. ``"ResNet18"``.
        output: the file to write; its name must end in ``.weights.h5``. Written
            atomically (a temporary file renamed).

    Returns:
        The written path.

    Raises:
        WeightsConversionError: the source does not fit ``frontend`` (another
            depth or layout: the message names the file and the first key).
        FrontendWeightsError: a download is impossible (offline).
        FileNotFoundError: a local source does not exist.
    """
    source = os.fspath(source)
    scheme, name, downloaded = _source_kind(source)
    _check_supported(scheme, frontend, source)
    if not str(output).endswith(SUFFIX):
        raise WeightsConversionError(f"{output}: the converted file's name must end in {SUFFIX}")
    if scheme == hub.TIMM:
        if downloaded:
            config_path, weights_path = hub.fetch_timm(name, frontend)
            timm_source.check_config(config_path, frontend, source=source)
            where = f"{source} ({weights_path})"
        else:
            weights_path = where = name
        state = timm_source.load_state_dict(weights_path)
        model = target_model(frontend)
        weights = timm_source.layer_weights(state, model, frontend, source=where)
    else:
        preset = hub.fetch_keras_hub(name, frontend) if downloaded else name
        backbone = keras_hub_source.load_backbone(preset)
        keras_hub_source.check_normalisation(preset, frontend, source=source)
        model = target_model(frontend)
        weights = keras_hub_source.layer_weights(backbone, model, frontend, source=source)
    return write_weights(model, weights, output)


def cached_path(spec: str, frontend: str) -> pathlib.Path:
    """Where ``resolve`` keeps ``spec`` converted for ``frontend``."""
    scheme, name = hub.parse(spec)
    safe = "".join(char if char.isalnum() or char in "._-" else "_" for char in name)
    return cache_dir() / scheme / safe / f"{frontend}{SUFFIX}"


def resolve(spec: str, frontend: str) -> pathlib.Path:
    """The converted weights file for ``timm:NAME`` / ``keras-hub:PRESET``, converting it once.

    Args:
        spec: ``"timm:NAME"`` or ``"keras-hub:PRESET"``.
        frontend: the registered frontend name.

    Returns:
        A ``.weights.h5`` path under ``cache_dir()`` for ``build_frontend(weights=...)``.
    """
    scheme, _ = hub.parse(spec)
    _check_supported(scheme, frontend, spec)
    path = cached_path(spec, frontend)
    if path.is_file():
        return path
    log.info("Converting %s for %s once, into %s", spec, frontend, path)
    return convert(spec, frontend, path)


__all__ = [
    "APPLICATIONS",
    "SUPPORTED",
    "WeightsConversionError",
    "cache_dir",
    "cached_path",
    "convert",
    "is_hub_spec",
    "resolve",
]
