"""The Hugging Face hub, asked as little as possible: is a model cached, is the hub reachable.

A hub id that is not in the local cache while the hub is off (``HF_HUB_OFFLINE``) or cannot be
reached fails at once with one line saying how to provide the weights, instead of a minute of
retries that leaves empty ``.tmp`` files behind.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .errors import MissingInput

WEIGHTS_HINT = ("download the model where there is network (huggingface-cli download <id>) and "
                 "copy the Hugging Face cache, or give a local model folder, or use minilm-l6")


def hub_offline() -> bool:
    """True when Hugging Face downloads are switched off (``HF_HUB_OFFLINE`` and the like)."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def hub_cached(repo: str) -> bool:
    """True when the hub model ``repo`` has a config in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:          # optional: without huggingface_hub nothing is cached
        return False
    try:
        found = try_to_load_from_cache(repo, "config.json")
    except ValueError:           # not a valid repo id
        return False
    return isinstance(found, str)


def check_hub_reachable(name: str, repo: str, timeout: float = 3.0) -> None:
    """``MissingInput`` at once when ``repo`` must be downloaded but the hub is off or cannot be
    reached (one connection attempt of ``timeout`` seconds instead of a minute of retries)."""
    if not hub_offline():
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return
        except OSError:
            pass
    raise MissingInput(f"encoder {name!r} ({repo}) is not in the local Hugging Face cache and "
                       "the hub is offline or unreachable", value=name, hint=WEIGHTS_HINT)
