"""Named training recipes: the defaults `train.py` fills in for every argument the user did not set.

A recipe is a YAML file in `recipes/` (or any path given to `--recipe`): `base` values, then per-model and per-data-set
differences, then the input geometry; `recipes/default.yaml` explains the layers. Two ship with the project:

- `default`: this project's recipe (AdamW, warm-up then cosine, label smoothing, augmentation, stochastic depth).
- `seed`: the replaced Keras notebooks' recipes, to reproduce their numbers.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from models import MODEL_REGISTRY
from models.configuration_vit import power_of_two_patch_sizes

from .run_records import with_current_names

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_NAMES = tuple(sorted(path.stem for path in RECIPES_DIR.glob("*.yaml")))
_SECTIONS = {"base", "models", "datasets", "geometry", "chosen_geometry"}
_GEOMETRIES = ("native", "model")


def recipe_path(recipe: str) -> Path:
    """The file of a named recipe, or `recipe` itself if it is a path to a YAML file."""
    if recipe in RECIPE_NAMES:
        return RECIPES_DIR / f"{recipe}.yaml"
    path = Path(recipe).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise ValueError(f"Unknown recipe {recipe!r}: use one of {', '.join(RECIPE_NAMES)} or the path of a recipe file "
                     "(YAML, laid out as recipes/default.yaml).")


def load_recipe(recipe: str) -> dict:
    """A recipe file's contents, checked for its layout (ValueError naming the file and the problem)."""
    path = recipe_path(recipe)
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"Recipe {path} is not valid YAML: {error}") from error
    if not isinstance(content, dict) or not set(content) <= _SECTIONS or not isinstance(content.get("base"), dict):
        raise ValueError(f"Recipe {path} must be a mapping with a 'base' mapping and optionally {sorted(_SECTIONS)}.")
    if content.get("geometry", "model") not in _GEOMETRIES:
        raise ValueError(f"Recipe {path}: geometry must be one of {_GEOMETRIES}, got {content['geometry']!r}.")
    return content


def merge(lower: dict, upper: dict | None) -> dict:
    """`upper` on top of `lower`: `config_overrides` merge field by field, other values replace; `null` removes."""
    merged = dict(lower)
    for key, value in (upper or {}).items():
        if value is None:
            merged.pop(key, None)
        elif key == "config_overrides":
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def native_geometry(model: str, image_size: int, convolutional_tokenizer: bool | None = None) -> dict:
    """The `default` recipe's input geometry: the file's own resolution (no upsampling), and for the ViTs a 7×7
    token grid at 28 px (patch 4, as the SPT/LSA paper's patch 4 on 32 px) and an 8×8 grid at 64 px and above.
    With the convolutional tokenizer (`vit_conv_lsa`'s, or any ViT's with `convolutional_tokenizer=True`: the
    user's override), whose blocks halve the grid, the largest power-of-2 patch up to side / 8 that tiles the
    image: 14×14 at 224 px."""
    if model == "cnn":
        return {"image_size": image_size}
    if convolutional_tokenizer is None:
        convolutional_tokenizer = MODEL_REGISTRY[model][2].get("use_convolutional_tokenizer", False)
    patch_size = 4 if image_size == 28 else image_size // 8
    if convolutional_tokenizer:
        patch_size = max(p for p in power_of_two_patch_sizes(image_size) if p <= patch_size)
    return {"image_size": image_size, "patch_size": patch_size}


def recipe_defaults(recipe: str, model: str, image_size: int = 28, dataset: str | None = None,
                    convolutional_tokenizer: bool | None = None) -> dict:
    """The recipe's value for every training argument it sets, for this model, file resolution and data set.

    `config_overrides` is a dict of model config fields (the user's own overrides are applied after it).
    `convolutional_tokenizer`: the user's `use_convolutional_tokenizer` override, if any (it changes the patch size).
    """
    content = load_recipe(recipe)
    path = recipe_path(recipe)
    # Each layer under the arguments' current names: a recipe file may still use a renamed argument's old name.
    base, for_model, for_dataset = (with_current_names(layer or {}, path) for layer in (
        content["base"], content.get("models", {}).get(model), content.get("datasets", {}).get(dataset)))
    values = merge(merge(base, for_model), for_dataset)
    overrides = values.get("config_overrides", {})
    if content.get("geometry") == "native":
        overrides = {**native_geometry(model, image_size, convolutional_tokenizer), **overrides}
    for chosen in content.get("chosen_geometry", []):
        if (chosen["dataset"], chosen["image_size"], chosen["model"]) == (dataset, image_size, model):
            overrides = {**overrides, **chosen["config_overrides"]}
    values["config_overrides"] = overrides
    return values


def fine_tuning_defaults(recipe: str, family: str | None, dataset: str | None = None) -> dict:
    """The recipe's values for a run that starts from a trained checkpoint (`--model_name_or_path`).

    The checkpoint brings its architecture and its image processor, so the layers that describe them are left out:
    `config_overrides` (every layer's), the input geometry and `normalization`. What is kept: `base`, the family's
    layer for a checkpoint of this project's models (`family`: `models.model_family`; None for another model type,
    which gets no model layer) and the data set's layer, whose choices come from the data (BloodMNIST's cells tell
    their class by size: no zoom; BreastMNIST's 78 validation images: keep the last epoch) whatever the model.
    """
    content = load_recipe(recipe)
    layers = [content.get("models", {}).get(family) if family else None, content.get("datasets", {}).get(dataset)]
    values = content["base"]
    for layer in layers:
        values = merge(values, layer)
    return {key: value for key, value in values.items() if key not in ("config_overrides", "normalization")}
