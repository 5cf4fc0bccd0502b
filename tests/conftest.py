import os
import sys
from urllib.parse import urlsplit

import pytest

from data.synthetic import write_synthetic_npz
from hub_server import LocalHubServer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A folder with a small synthetic `breastmnist.npz` in the official layout."""
    directory = tmp_path_factory.mktemp("medmnist")
    write_synthetic_npz(directory, "breastmnist", n_train=96, n_val=40, n_test=44, seed=0)
    return directory


@pytest.fixture
def local_hub(monkeypatch, tmp_path):
    """A running `LocalHubServer` that `huggingface_hub` / `transformers` talk to instead of huggingface.co.

    Works in this process and in subprocesses: the `HF_*` variables are set in `os.environ`, and since
    `huggingface_hub.constants` reads them only once, at import, the matching constants are patched too.
    Caches and the token file go to `tmp_path`; no token is picked up from the environment.
    """
    from huggingface_hub import constants

    hf_home = tmp_path / "hf_home"
    hub_cache = hf_home / "hub"
    with LocalHubServer() as server:
        env = {
            "HF_ENDPOINT": server.endpoint,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",  # no user-agent telemetry, no /api/agent-harnesses lookup
            "HF_HUB_DISABLE_XET": "1",  # upload_folder takes the plain create_commit path
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hub_cache),
            "NO_PROXY": ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get("NO_PROXY")])),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING",
                     "HUGGINGFACE_HUB_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE", "HF_TOKEN_PATH"):
            monkeypatch.delenv(name, raising=False)

        patched = {
            "ENDPOINT": server.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(server.endpoint).hostname},
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HUB_DISABLE_XET": True,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hub_cache),
            "HUGGINGFACE_HUB_CACHE": str(hub_cache),
            "HF_ASSETS_CACHE": str(hf_home / "assets"),
            "HF_XET_CACHE": str(hf_home / "xet"),
            "HF_TOKEN_PATH": str(hf_home / "token"),
            "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        }
        for name, value in patched.items():
            monkeypatch.setattr(constants, name, value)
        _forget_transformers_hf_api()  # it keeps one HfApi, whose endpoint is fixed when first built
        try:
            yield server
        finally:
            _forget_transformers_hf_api()


def _forget_transformers_hf_api():
    hub_module = sys.modules.get("transformers.utils.hub")
    if hub_module is not None and getattr(hub_module, "_hf_api", None) is not None:
        hub_module._hf_api = None
