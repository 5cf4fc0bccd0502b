"""The bundled BreastMNIST (`data/bundled/breastmnist.npz`): the README's main command trains in a fresh copy of the
project with no data folder beside it and no network, the bundled file is checked like every other file, and a
damaged copy is refused with the usual clear error.

The fresh copy holds exactly what a clone of the project holds (git's tracked files plus the untracked ones git does
not ignore, so a wrong `.gitignore` exception fails here), in a temporary folder with an empty `$HOME`: no
`~/.medmnist`, no accelerate configuration, no Hugging Face cache. The network is cut with `unshare -n` where the
machine allows it; HTTP(S) goes to a closed local port as well, so a download could not succeed either way.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from medmnist.info import INFO

import data
from data import MedMNISTDataError, load_medmnist, medmnist_info

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "bundled" / "breastmnist.npz"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _can_unshare_network() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    return subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0


def _project_files() -> list[str]:
    """What a clone of the project holds: tracked files and the untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The project as a fresh clone would have it, alone in a temporary folder (no `../shared` beside it)."""
    if not (ROOT / ".git").exists():
        pytest.skip("the project is not a git checkout: cannot tell which files a clone would hold")
    copy = tmp_path_factory.mktemp("fresh") / "project"
    for name in _project_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    assert not (copy.parent / "shared").exists()
    return copy


def _offline_env(home: Path) -> dict:
    """A new user's environment: empty home, no data folder variable, and every HTTP(S) request refused."""
    home.mkdir(parents=True, exist_ok=True)
    dead = f"http://127.0.0.1:{_closed_port()}"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HF_", "MEDMNIST_", "ACCELERATE_", "XDG_")) and key.lower() not in (
               "http_proxy", "https_proxy", "all_proxy", "no_proxy", "omp_num_threads")}
    env.update({"HOME": str(home), "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
                "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def _readme_main_command() -> list[str]:
    """The quick start's training command, read from the README (so the test follows the README)."""
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    command = next(line for line in lines if line.startswith("accelerate launch train.py --model vit_lsa"))
    assert "--data_dir" not in command, "the quick start must not need a data folder"
    return command.split()


def _launch(words: list[str], cwd: Path, env: dict, *extra: str, launcher: bool = True) -> subprocess.CompletedProcess:
    """Run the command offline; `launcher=False` runs the script with plain `python` (its own exit status, which
    `accelerate launch` turns into 1 and a traceback of its own)."""
    assert words[:2] == ["accelerate", "launch"]
    console_script = Path(sys.executable).with_name("accelerate")
    if not launcher:
        command = [sys.executable, *words[2:], *extra]
    elif console_script.is_file():  # the command a user runs, from this Python's environment
        command = [str(console_script), "launch", *words[2:], *extra]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", *words[2:], *extra]
    if _can_unshare_network():
        command = ["unshare", "-n", *command]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_bundled_file_is_the_official_release():
    assert BUNDLED.is_file()
    assert hashlib.md5(BUNDLED.read_bytes(), usedforsecurity=False).hexdigest() == INFO["breastmnist"]["MD5"]
    assert (ROOT / "data" / "bundled" / "README.md").is_file()
    assert "CC BY 4.0" in (ROOT / "data" / "bundled" / "README.md").read_text()
    # Nothing else is bundled: every other flag and size comes from a data folder or a download.
    assert sorted(p.name for p in data.BUNDLED_DIR.glob("*.npz")) == ["breastmnist.npz"]
    assert data.bundled_npz("breastmnist") == BUNDLED
    assert data.bundled_npz("breastmnist", 64) is None and data.bundled_npz("bloodmnist") is None


def test_readme_main_command_trains_offline_in_a_fresh_copy(fresh_copy, tmp_path):
    """The README's command, as written plus a short run, trains on the bundled file and writes `best/`."""
    assert (fresh_copy / "data" / "bundled" / "breastmnist.npz").is_file(), "a clone would not hold the bundled file"
    result = _launch(_readme_main_command(), fresh_copy, _offline_env(tmp_path / "home"),
                     "--max_train_steps", "2", "--output_dir", "runs/quick")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    best = fresh_copy / "runs" / "quick" / "best"
    assert (best / "model.safetensors").is_file() and (best / "config.json").is_file()
    assert (fresh_copy / "runs" / "quick" / "all_results.json").is_file()
    # The log says which file it used: the copy's own bundled file, verified.
    bundled = fresh_copy / "data" / "bundled" / "breastmnist.npz"
    assert f"using the copy bundled with the project, {bundled}" in log
    assert f"Data: {bundled} (MD5 {INFO['breastmnist']['MD5']}, as medmnist.INFO records)" in log
    assert "Downloading" not in log


def test_damaged_bundled_file_is_refused(fresh_copy, tmp_path):
    """A corrupted bundled file: exit 2 with the MD5 error and how to restore it; nothing written."""
    bundled = fresh_copy / "data" / "bundled" / "breastmnist.npz"
    original = bundled.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2: len(damaged) // 2 + 4096] = bytes(4096)  # a block of zeros, same size
    bundled.write_bytes(bytes(damaged))
    try:
        result = _launch(_readme_main_command(), fresh_copy, _offline_env(tmp_path / "home"),
                         "--max_train_steps", "2", "--output_dir", "runs/damaged", launcher=False)
    finally:
        bundled.write_bytes(original)
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-4000:]
    assert "MD5 mismatch" in log and str(bundled) in log
    assert "git checkout -- data/bundled/breastmnist.npz" in log and "--data_dir" in log
    assert "Traceback" not in log
    assert not (fresh_copy / "runs" / "damaged").exists()


def test_bundled_copy_comes_after_the_data_folder_and_before_a_download(tmp_path, monkeypatch):
    """Order: the data folder's own file wins; a folder without it gives the bundled copy, not a download."""
    import medmnist

    from data.synthetic import write_synthetic_npz

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    dead_url = f"http://127.0.0.1:{_closed_port()}/breastmnist.npz"
    monkeypatch.setitem(medmnist.INFO["breastmnist"], "url", dead_url)  # a download here would fail
    (tmp_path / "empty").mkdir()
    dataset = load_medmnist("breastmnist", data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache")
    info = medmnist_info(dataset)
    assert Path(info.file_path) == BUNDLED and info.checksum_verified
    assert [len(dataset[split]) for split in ("train", "validation", "test")] == [546, 78, 156]
    assert list((tmp_path / "empty").iterdir()) == []  # no download was started

    own = write_synthetic_npz(tmp_path / "own", "breastmnist", n_train=20, n_val=10, n_test=10)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(own.parent))
    dataset = load_medmnist("breastmnist", verify_checksum=False, cache_dir=tmp_path / "cache")
    assert Path(medmnist_info(dataset).file_path) == own.resolve()


def test_damaged_bundled_file_error_says_how_to_restore(tmp_path, monkeypatch):
    """The same check and message in-process, for a truncated copy (a broken npz, not only a wrong MD5)."""
    fake_bundle = tmp_path / "bundled"
    fake_bundle.mkdir()
    (fake_bundle / "breastmnist.npz").write_bytes(BUNDLED.read_bytes()[:100_000])
    monkeypatch.setattr(data.medmnist_files, "BUNDLED_DIR", fake_bundle)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    for verify in (True, False):
        with pytest.raises(MedMNISTDataError, match="bundled with the project") as error:
            load_medmnist("breastmnist", data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache",
                          verify_checksum=verify, download=False)
        assert "git checkout -- data/bundled/breastmnist.npz" in str(error.value)
        assert ("MD5 mismatch" in str(error.value)) == verify
