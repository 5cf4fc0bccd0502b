"""Pushing a run to the Hugging Face Hub: the `best` model, its model card and the TensorBoard logs.

Uploads go through `huggingface_hub.HfApi` (`create_repo`, `upload_folder`) from the main process only. Each push
first copies what it sends into a staging folder, so a background upload never sees files that training is
rewriting; pushes during training run in the background (`run_as_future`), the last one blocks.
"""

import logging
import shutil
from concurrent.futures import Future
from pathlib import Path

from huggingface_hub import HfApi, get_token

from models.checkpoint_fit import MODEL_TYPES

logger = logging.getLogger(__name__)

SECRET_FLAGS = ("--hub_token",)


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with the value of every secret flag replaced by `***` (`--flag value` and `--flag=value`)."""
    redacted, hide_next = [], False
    for arg in argv:
        if hide_next:
            redacted.append("***")
            hide_next = False
        elif arg in SECRET_FLAGS:
            redacted.append(arg)
            hide_next = True
        elif any(arg.startswith(flag + "=") for flag in SECRET_FLAGS):
            redacted.append(arg.split("=", 1)[0] + "=***")
        else:
            redacted.append(arg)
    return redacted


def _format_metric(metrics: dict | None, name: str) -> str:
    if not metrics or metrics.get(name) is None:
        return "–"
    text = f"{metrics[name]:.4f}"
    interval = metrics.get(f"{name}_ci95")
    if interval:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def _distillation_note(teacher: str | list[str] | None) -> str:
    if not teacher:
        return ""
    if isinstance(teacher, list):
        names = ", ".join(f"`{name}`" for name in teacher)
        return f"\nDistilled from the mean logits of the teachers {names} (`--teacher_model_name_or_path`).\n"
    return f"\nDistilled from the teacher `{teacher}` (`--teacher_model_name_or_path`).\n"


def _data_licence(data: dict) -> str:
    return (f"Data licence: {data.get('license', 'CC BY 4.0')}. Cite MedMNIST v2: Jiancheng Yang et al., \"MedMNIST "
            "v2 – A large-scale\nlightweight benchmark for 2D and 3D biomedical image classification\", Scientific "
            "Data, 2023.")


def _origin(summary: dict) -> str:
    """Trained from scratch, or fine-tuned from a checkpoint (named, with its weights' hash)."""
    start = summary.get("starting_checkpoint")
    if not start:
        return "Trained from scratch"
    digest = f", weights SHA-256 `{start['weights_sha256']}`" if start.get("weights_sha256") else ""
    return f"Fine-tuned from `{start['name_or_path']}` (`{start['model_type']}`{digest}; `--model_name_or_path`)"


def _pipeline_arguments(summary: dict) -> str:
    """This project's models carry their code (`trust_remote_code=True`); transformers' own model types do not."""
    start = summary.get("starting_checkpoint")
    return ", trust_remote_code=True" if not start or start["model_type"] in MODEL_TYPES else ""


def model_card(summary: dict) -> str:
    """A model card (README.md) from a run summary: metrics table, data set, licence, the command that made it."""
    data = summary["dataset"]
    medmnist = data.get("source", "medmnist") == "medmnist"
    validation, test = summary.get("validation_metrics"), summary.get("test_metrics")
    rows = "\n".join(
        f"| {split} | {_format_metric(m, 'acc')} | {_format_metric(m, 'auc')} |"
        for split, m in (("validation (best epoch)", validation), ("test", test))
    )
    return f"""---
library_name: transformers
license: {data.get("license_id", "cc-by-4.0")}
pipeline_tag: image-classification
tags:
{"- medmnist" if medmnist else "- medical-imaging"}
- {data["flag"]}
- {summary["model_name"]}
{"datasets:" if medmnist else ""}
{"- medmnist" if medmnist else ""}
---

# {summary["model_name"]} on {data["flag"]} ({data["size"]}×{data["size"]})

{_origin(summary)} on {"MedMNIST's" if medmnist else "the images of"} `{data["flag"]}` ({data.get("task", "")}, {len(data.get("label_names", []))} labels:
{", ".join(data.get("label_names", []))}). Model chosen on the validation split by `{summary["selection_metric"]}`
at epoch {summary.get("best_epoch")}; {"the test split was evaluated once, on that model" if test else
"the test split was not evaluated (`--skip_test`)"}.
{_distillation_note(summary.get("teacher"))}
| split | ACC [95% CI] | AUC [95% CI] |
| --- | --- | --- |
{rows}

ACC and AUC as MedMNIST defines them (`medmnist.Evaluator`).

## Use

```python
from transformers import pipeline
classify = pipeline("image-classification", model="<this repo>"{_pipeline_arguments(summary)})
```

## Data

{data.get("description", "")}

{_data_licence(data) if medmnist else "Data licence: the data owner's (not recorded)."}

## How it was made

```
{summary["command"]}
```

Hardware: {summary.get("hardware", {}).get("description", "unknown")}. Wall-clock: {summary.get("wall_clock_seconds", 0):.0f} s.
The full resolved configuration is in `all_results.json`.
"""


class HubPushError(RuntimeError):
    """The final upload to the Hub failed; everything local is written."""


def open_hub_pusher(repo_id: str, token: str | None, staging_dir: Path, private: bool = False) -> "HubPusher":
    """A `HubPusher`, checked up front: a token is available and the Hub answers (the repository is created). A
    ValueError says what is missing, before the run writes anything."""
    token = token or get_token()
    if not token:
        raise ValueError("--push_to_hub needs a Hub token: pass --hub_token, set HF_TOKEN, or log in once with "
                         "`hf auth login`.")
    try:
        return HubPusher(repo_id, token, staging_dir, private)
    except Exception as error:  # noqa: BLE001 - offline mode, no network, refused token, bad repository id, ...
        raise ValueError(f"--push_to_hub: the Hub could not create or reach {repo_id!r} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]}). Check the network (and HF_HUB_OFFLINE), the token and "
                         "--hub_model_id, or train without --push_to_hub and upload best/ later.") from None


class HubPusher:
    """Creates the repository once and uploads `best/`, the model card and the logs on each `push`.

    A background upload that fails is logged and, in effect, retried: the next push uploads the newer snapshot. Only the
    final (foreground) push raises, as `HubPushError`."""

    def __init__(self, repo_id: str, token: str | None, staging_dir: Path, private: bool = False):
        self.api = HfApi(token=token)
        self.repo_id = self.api.create_repo(repo_id, exist_ok=True, private=private).repo_id
        self.staging_dir = Path(staging_dir)
        self.pending: Future | None = None
        self.failures: list[str] = []

    def push(self, best_dir: Path, logs_dir: Path | None, card: str, extra_files: list[Path], message: str,
             background: bool) -> Future | None:
        """Upload a snapshot of the run; waits for a previous background push before staging the next."""
        self.wait()
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        shutil.copytree(best_dir, self.staging_dir)
        if logs_dir is not None and Path(logs_dir).is_dir():
            shutil.copytree(logs_dir, self.staging_dir / "runs")
        for path in extra_files:
            if Path(path).is_file():
                shutil.copy2(path, self.staging_dir / Path(path).name)
        (self.staging_dir / "README.md").write_text(card)
        upload = dict(repo_id=self.repo_id, folder_path=str(self.staging_dir), commit_message=message)
        if background:
            self.pending = self.api.upload_folder(**upload, run_as_future=True)
            return self.pending
        try:
            self.api.upload_folder(**upload)
        except Exception as error:  # noqa: BLE001 - any failure of the last upload
            raise HubPushError(f"the final push to {self.repo_id} failed ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200]})") from None
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        return None

    def wait(self) -> None:
        """Wait for a background push; a failed one is logged, not raised (training goes on)."""
        if self.pending is None:
            return
        try:
            self.pending.result()
        except Exception as error:  # noqa: BLE001
            self.failures.append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            logger.warning(f"A background push to {self.repo_id} failed ({self.failures[-1]}); the next checkpoint's "
                           "push uploads the newer snapshot.")
        finally:
            self.pending = None
