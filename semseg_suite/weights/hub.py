"""Downloads for ``timm:NAME`` and ``keras-hub:PRESET``, through those libraries' own code.

``timm:NAME`` is the Hugging Face Hub repository ``timm/NAME`` (timm's own hub:
``config.json`` and ``model.safetensors``), fetched with
``huggingface_hub.hf_hub_download``, which caches it (``HF_HOME``).
``keras-hub:PRESET`` is anything ``keras_hub.models.Backbone.from_preset`` takes: a
built-in preset name (downloaded from Kaggle by ``kagglehub``, cached under
``KAGGLEHUB_CACHE``), a ``kaggle://`` or ``hf://`` handle, or a local folder.

Offline, both libraries retry for tens of seconds (huggingface_hub backs off five
times). Before downloading anything not already cached, the server (or the HTTPS
proxy in the environment) is therefore probed with a TCP connection that must
succeed within ``PROBE_TIMEOUT_S``; ``HF_HUB_OFFLINE=1`` skips the probe for the
Hugging Face Hub. Either way the error names the source and says how to convert
a local copy instead.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request

from frontends.base import FrontendWeightsError

TIMM = "timm"
KERAS_HUB = "keras-hub"
SCHEMES = (TIMM, KERAS_HUB)
PROBE_TIMEOUT_S = 1.0
# The Kaggle API that kagglehub downloads keras-hub's built-in presets from.
KAGGLE_ENDPOINT = "https://api.kaggle.com"


def parse(spec) -> tuple[str, str] | None:
    """``"timm:resnet18.tv_in1k"`` -> ``("timm", "resnet18.tv_in1k")``; ``None`` for anything else."""
    if not isinstance(spec, str):
        return None
    scheme, separator, name = spec.partition(":")
    if not separator or scheme not in SCHEMES:
        return None
    if not name:
        raise FrontendWeightsError(f"{spec!r}: name the {scheme} model after the colon, e.g. {example(scheme)}")
    return scheme, name


def example(scheme: str) -> str:
    return "timm:resnet18.tv_in1k" if scheme == TIMM else "keras-hub:resnet_18_imagenet"


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s server (or its proxy) opens within ``timeout`` s.

    Runs in a daemon thread so that a hanging DNS lookup is bounded too.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    connected = threading.Event()

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            connected.set()
        except OSError:
            pass

    threading.Thread(target=connect, name="semseg-suite-weights-probe", daemon=True).start()
    return connected.wait(timeout)


def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _ensure_online(source: str, url: str, advice: str, *, offline_flag: bool = False) -> None:
    if offline_flag:
        reason = "HF_HUB_OFFLINE is set"
    elif not reachable(url):
        reason = f"{urllib.parse.urlsplit(url).hostname} did not answer within {PROBE_TIMEOUT_S:g} s"
    else:
        return
    raise FrontendWeightsError(
        f"Cannot download {source}: offline ({reason}). {advice} Or train without pretrained "
        "weights: --frontend-weights none (frontend_weights=None in Python)."
    )


def _convert_command(source: str, frontend: str) -> str:
    output = f"{frontend.lower()}.weights.h5"
    return f"python -m semseg_suite.weights convert {source} --frontend {frontend} --output {output}"


def fetch_timm(name: str, frontend: str) -> tuple[str, str]:
    """Local paths of ``timm/NAME``'s ``config.json`` and ``model.safetensors``, downloading them if needed.

    Raises:
        FrontendWeightsError: offline and not cached, or no such repository/file.
    """
    import huggingface_hub
    from huggingface_hub import constants, errors

    repo = f"timm/{name}"
    files = ("config.json", "model.safetensors")
    cached = {file: huggingface_hub.try_to_load_from_cache(repo, file) for file in files}
    if all(isinstance(path, str) for path in cached.values()):
        return cached["config.json"], cached["model.safetensors"]
    endpoint = constants.ENDPOINT
    _ensure_online(
        f"timm:{name} ({endpoint}/{repo})",
        endpoint,
        f"On a machine with internet, `{_convert_command(f'timm:{name}', frontend)}` writes the converted "
        f"file; or download model.safetensors from {endpoint}/{repo} and convert it here with "
        f"`{_convert_command('model.safetensors', frontend)}`. Then pass that file: "
        f"--frontend-weights {frontend.lower()}.weights.h5.",
        offline_flag=_hf_offline(),
    )
    try:
        return tuple(huggingface_hub.hf_hub_download(repo, file) for file in files)
    except errors.RepositoryNotFoundError:
        raise FrontendWeightsError(
            f"timm:{name}: no repository {repo} on {endpoint} (timm's pretrained tags look like "
            "resnet18.tv_in1k, resnet34.a1_in1k, densenet161.tv_in1k)"
        ) from None
    except errors.EntryNotFoundError:
        raise FrontendWeightsError(f"timm:{name}: {repo} has no {' or '.join(files)}") from None


def fetch_keras_hub(preset: str, frontend: str) -> str:
    """Checks that ``preset`` can be read: a local folder, or a download whose server answers.

    Returns:
        ``preset``, for ``keras_hub.models.Backbone.from_preset``.

    Raises:
        FrontendWeightsError: its server does not answer (offline).
    """
    if os.path.isdir(preset):
        return preset
    scheme = preset.split("://")[0].lower() if "://" in preset else "kaggle"
    if scheme == "hf":
        from huggingface_hub import constants

        url, offline = constants.ENDPOINT, _hf_offline()
    elif scheme == "kaggle":
        url, offline = KAGGLE_ENDPOINT, False
    else:  # gs://, modelscope://, ...: keras-hub's business
        return preset
    _ensure_online(
        f"keras-hub:{preset} ({url})",
        url,
        "Copy the preset folder (config.json and the weights file) from a machine with internet, where "
        f"keras_hub.models.Backbone.from_preset({preset!r}) downloads it (kagglehub keeps it under "
        "$KAGGLEHUB_CACHE, default ~/.cache/kagglehub), and convert it here with "
        f"`{_convert_command('PRESET_FOLDER', frontend)}`; then pass that file: "
        f"--frontend-weights {frontend.lower()}.weights.h5.",
        offline_flag=offline,
    )
    return preset
