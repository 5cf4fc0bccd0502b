"""Round trips through `LocalHubServer` (see hub_server.py) with the real huggingface_hub / transformers clients."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from safetensors.torch import save_file

REPO = "medmnist-tests/tiny-run"
TOKEN = "hf_localHubTestToken0123456789abcdef"


def make_folder(root: Path) -> dict[str, bytes]:
    """A small text file, a ~1 MB safetensors file and a nested TensorBoard file; returns {path: bytes}."""
    root.mkdir(parents=True)
    (root / "runs").mkdir()
    (root / "notes.txt").write_text("epoch 1: val_auc=0.91\n")
    generator = torch.Generator().manual_seed(0)
    save_file({"weight": torch.randn(512, 512, generator=generator)}, str(root / "model.safetensors"))
    (root / "runs" / "events.out.tfevents.x").write_bytes(os.urandom(4096))
    return read_folder(root)


def read_folder(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".cache" not in path.relative_to(root).parts  # local_dir bookkeeping
    }


def push(api: HfApi, folder: Path, message: str, path_in_repo: str = ""):
    api.create_repo(REPO, exist_ok=True, private=True)
    return api.upload_folder(repo_id=REPO, folder_path=folder, path_in_repo=path_in_repo, commit_message=message)


def test_upload_folder_lands_exact_bytes_and_records_commits(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.endpoint, token=TOKEN)
    files = make_folder(tmp_path / "out")
    assert 1_000_000 < len(files["model.safetensors"]) < 1_100_000

    first = push(api, tmp_path / "out", "epoch 1")
    assert local_hub.repos[REPO] == files
    assert local_hub.private[REPO] is True
    assert [c["message"] for c in local_hub.commits] == ["epoch 1"]
    assert local_hub.commits[0]["repo_id"] == REPO
    assert local_hub.commits[0]["files"] == files
    assert first.oid == local_hub.commits[0]["oid"]

    # Second upload (create_repo again with exist_ok): one file changed, one added, the weights untouched.
    (tmp_path / "out" / "notes.txt").write_text("epoch 2: val_auc=0.93\n")
    (tmp_path / "out" / "runs" / "events.out.tfevents.y").write_bytes(b"second run")
    second = push(api, tmp_path / "out", "epoch 2")
    assert [c["message"] for c in local_hub.commits] == ["epoch 1", "epoch 2"]
    assert local_hub.commits[1]["parent"] == first.oid
    assert second.oid == local_hub.commits[1]["oid"] != first.oid
    # The client skips files the Hub already holds (preupload returned their oid): only the changes travel.
    assert local_hub.commits[1]["files"] == {
        "notes.txt": b"epoch 2: val_auc=0.93\n",
        "runs/events.out.tfevents.y": b"second run",
    }
    assert local_hub.repos[REPO] == read_folder(tmp_path / "out")
    assert local_hub.unhandled == []


def test_snapshot_download_and_hf_hub_download_give_back_identical_files(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.endpoint, token=TOKEN)
    files = make_folder(tmp_path / "out")
    first = push(api, tmp_path / "out", "best checkpoint", path_in_repo="checkpoints/best")
    expected = {f"checkpoints/best/{path}": data for path, data in files.items()}
    assert local_hub.repos[REPO] == expected

    snapshot = Path(snapshot_download(REPO, token=TOKEN))  # cache under the fixture's tmp HF_HUB_CACHE
    assert snapshot.is_relative_to(tmp_path)
    assert read_folder(snapshot) == expected
    local_dir = Path(snapshot_download(REPO, local_dir=tmp_path / "copy", token=TOKEN))
    assert read_folder(local_dir) == expected

    (tmp_path / "out" / "notes.txt").write_text("overwritten\n")
    push(api, tmp_path / "out", "newer notes", path_in_repo="checkpoints/best")
    latest = hf_hub_download(REPO, "checkpoints/best/notes.txt", cache_dir=tmp_path / "c2")
    older = hf_hub_download(REPO, "checkpoints/best/notes.txt", revision=first.oid, cache_dir=tmp_path / "c2")
    assert Path(latest).read_bytes() == b"overwritten\n"
    assert Path(older).read_bytes() == files["notes.txt"]
    nested = hf_hub_download(REPO, "checkpoints/best/runs/events.out.tfevents.x", cache_dir=tmp_path / "c2")
    assert Path(nested).read_bytes() == files["runs/events.out.tfevents.x"]

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.bin", cache_dir=tmp_path / "c2")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("medmnist-tests/does-not-exist", cache_dir=tmp_path / "c2")
    assert local_hub.unhandled == []


def test_transformers_model_round_trip_through_hf_endpoint(local_hub, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=37, image_size=8, patch_size=4, num_channels=1, num_labels=3)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "vit")
    push(HfApi(endpoint=local_hub.endpoint, token=TOKEN), tmp_path / "vit", "tiny ViT")
    assert set(local_hub.repos[REPO]) == {"config.json", "model.safetensors"}

    # No endpoint argument anywhere below: HF_ENDPOINT (as set by the fixture) must route to the local server.
    loaded_config = transformers.AutoConfig.from_pretrained(REPO)
    assert (loaded_config.model_type, loaded_config.hidden_size, loaded_config.num_labels) == ("vit", 32, 3)
    loaded = transformers.AutoModelForImageClassification.from_pretrained(REPO).eval()
    assert type(loaded) is transformers.ViTForImageClassification

    pixels = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(pixel_values=pixels).logits, loaded(pixel_values=pixels).logits
    assert torch.equal(expected, actual)
    downloaded = {path for method, path, _ in local_hub.requests if method == "GET" and "/resolve/" in path}
    assert any(path.endswith("/config.json") for path in downloaded)
    assert any(path.endswith("/model.safetensors") for path in downloaded)


def test_token_only_travels_in_authorization_header(local_hub, tmp_path):
    make_folder(tmp_path / "out")
    api = HfApi(endpoint=local_hub.endpoint, token=TOKEN)
    push(api, tmp_path / "out", "with token")
    snapshot_download(REPO, token=TOKEN, cache_dir=tmp_path / "cache")

    assert local_hub.requests, "no request reached the server"
    assert local_hub.tokens == [TOKEN] * len(local_hub.requests)
    for method, path, headers in local_hub.requests:
        assert headers["authorization"] == f"Bearer {TOKEN}", (method, path)
        leaked = [name for name, value in headers.items() if name != "authorization" and TOKEN in value]
        assert not leaked and TOKEN not in path, (method, path, leaked)
    for commit in local_hub.commits:
        assert TOKEN not in commit["message"] + commit["description"]
        assert not any(TOKEN.encode() in data for data in commit["files"].values())
    assert not any(TOKEN.encode() in data for data in local_hub.repos[REPO].values())

    # And without a token, nothing is sent: the fixture isolates the test from any saved or env token.
    hf_hub_download(REPO, "notes.txt", cache_dir=tmp_path / "anonymous")
    assert "authorization" not in local_hub.requests[-1][2]


def test_subprocess_reaches_server_through_environment(local_hub, tmp_path):
    files = make_folder(tmp_path / "out")
    push(HfApi(endpoint=local_hub.endpoint, token=TOKEN), tmp_path / "out", "from parent")
    script = (
        "import sys; from huggingface_hub import HfApi, hf_hub_download; "
        "sys.stdout.write(open(hf_hub_download(sys.argv[1], 'notes.txt'), encoding='utf-8').read()); "
        "HfApi().upload_file(path_or_fileobj=b'from child', path_in_repo='child.txt', repo_id=sys.argv[1], "
        "commit_message='from subprocess')"
    )
    env = {**os.environ, "HF_TOKEN": TOKEN}  # the fixture's HF_* variables are in os.environ
    result = subprocess.run([sys.executable, "-c", script, REPO], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == files["notes.txt"].decode()
    assert local_hub.commits[-1]["message"] == "from subprocess"
    assert local_hub.repos[REPO]["child.txt"] == b"from child"
    assert Path(os.environ["HF_HUB_CACHE"]).is_relative_to(tmp_path)
    assert any((Path(os.environ["HF_HUB_CACHE"]) / "models--medmnist-tests--tiny-run").rglob("notes.txt"))
