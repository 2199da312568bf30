"""The model card (``README.md``) of a model folder, written from what the folder holds.

Every writer of a model folder (training, ``save_pretrained``, ``push_to_hub``, ``carl push``,
``carl convert``) ends by calling :func:`write_card`, so all cards say the same things: what the
model is, how to install what it needs (the real pip names from ``carl.json``), how to load and
sample it (the Hub repo id when pushing, the local folder otherwise), the figures measured in
training (``results.json``), the sample grid (``samples.png``) and the recipe (``recipe.yaml``).
The card reads the files as plain JSON / YAML, so a folder whose plugins are not installed here
still gets its card.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from carl.layout import CARD_FILE, CONFIG_FILE, RECIPE_FILE, REQUIREMENTS_FILE, RESULTS_FILE, SAMPLES_FILE, WEIGHTS_FILE


def _read(folder: Path, name: str) -> dict | None:
    path = folder / name
    if not path.exists():
        return None
    text = path.read_text()
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def pip_requirement(distribution: str, version: str | None) -> str:
    """``'carl-timeseries>=0.1.0'``: a distribution at least at the version a model was saved with."""
    return f"'{distribution}>={version}'" if version and version != "?" else distribution


def install_line(requirements: dict | None) -> str:
    """``pip install`` of carl and of each plugin distribution the model needs (``carl.json``)."""
    requirements = requirements or {}
    packages = [pip_requirement("carl", requirements.get("carl"))]
    packages += [pip_requirement(p["distribution"], p.get("version")) for p in requirements.get("plugins", {}).values()]
    return "pip install " + " ".join(packages)


def _summary(config: dict) -> str:
    backbone = config.get("backbone", {})
    encoder = backbone.get("encoder_depth") or 0
    return (f"Tokenizer `{config['tokenizer']['name']}`, order `{config['order']['name']}`, scoring rule "
            f"`{config['score']['name']}`, conditioner `{config['conditioner']['name']}`; a "
            f"{backbone.get('depth')}-block transformer of width {backbone.get('width')}"
            + (f" with a {encoder}-block encoder (MAR's encoder-decoder)" if encoder else "") + ".")


def _generate_call(config: dict, sample: dict) -> str:
    """``model.generate(...)`` with the recipe's sampling settings: one sample per class label, or 8."""
    conditioner = config["conditioner"]
    if conditioner["name"] == "class":
        args = [f"torch.arange({min(conditioner.get('num_classes', 10), 10)})"]
    else:
        args = ["batch_size=8"]
    args += [f"{k}={sample[k]!r}" for k in ("num_steps", "cfg", "temperature") if k in sample]
    return f"samples = model.generate({', '.join(args)})"


def model_card(folder: Path, location: str | None = None) -> str:
    """The card of ``folder``; ``location`` is what users pass to load it (a Hub repo id when
    pushing; default: the folder path)."""
    folder = Path(folder)
    where = location or str(folder)
    config = _read(folder, CONFIG_FILE)
    if config is None:
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}")
    recipe = _read(folder, RECIPE_FILE)
    requirements = _read(folder, REQUIREMENTS_FILE) or {}
    results = _read(folder, RESULTS_FILE) or {}
    tags = ["carl", "continuous-autoregression", f"score-{config['score']['name']}",
            f"tokenizer-{config['tokenizer']['name']}", f"order-{config['order']['name']}"]
    if recipe and "data" in recipe:
        tags.append(f"data-{recipe['data']['name']}")
    plugins = requirements.get("plugins", {})
    lines = ["---", yaml.safe_dump({"library_name": "carl", "tags": tags}, sort_keys=False).strip(), "---", "",
             f"# {Path(where).name or where}: a carl continuous autoregressive model", "",
             "A model of carl (the Continuous AutoRegression Library): it generates continuous "
             "tokens one generation step at a time, each drawn from a distribution head trained with a "
             "strictly proper scoring rule.", "", _summary(config), ""]
    if plugins:
        lines += ["Its parts come from the carl plugin(s) "
                  + ", ".join(f"`{name}` (`{p['distribution']}` {p['version']})" for name, p in plugins.items()) + ".", ""]
    if (folder / SAMPLES_FILE).exists():
        lines += ["## Samples", "", f"![samples]({SAMPLES_FILE})", ""]
    if results:
        lines += ["## Measured in training", "", "| figure | value |", "|---|---|",
                  *(f"| {k} | {v} |" for k, v in results.items()), ""]
    sample = (recipe or {}).get("sample", {})
    lines += ["## Use", "", "```bash", install_line(requirements),
              f"carl sample {where}   # writes samples.png, or samples.pt when the data cannot be drawn", "```", "",
              "```python", "import torch", "from carl import ContinuousAR", "",
              f"model = ContinuousAR.from_pretrained({where!r})", _generate_call(config, sample), "```", ""]
    if recipe:
        shown = {k: v for k, v in recipe.items() if k != "output"}  # where it was trained is no one else's business
        text = yaml.safe_dump(shown, sort_keys=False, default_flow_style=None, width=100).strip()
        lines += ["## Recipe", "", f"Trained from this recipe (`{RECIPE_FILE}`; `carl train {RECIPE_FILE}` trains it again):", "",
                  "<details><summary>recipe.yaml</summary>", "", "```yaml", text, "```", "", "</details>", ""]
    else:
        lines += ["## Recipe", "", "Saved from Python without a training recipe: `carl sample` uses the default "
                  "sampling settings, and writes the samples as a tensor (`.pt`) unless the data can be drawn.", ""]
    lines += ["## Files", "", f"`{CONFIG_FILE}` (the model's parts), `{WEIGHTS_FILE}` (the weights), "
              f"`{REQUIREMENTS_FILE}` (the carl and plugin versions its parts need)"
              + (f", `{RECIPE_FILE}`" if recipe else "") + (f", `{RESULTS_FILE}`" if results else "") + ".", ""]
    return "\n".join(lines)


def write_card(folder: Path, location: str | None = None) -> Path:
    """Write ``folder/README.md`` (see :func:`model_card`)."""
    path = Path(folder) / CARD_FILE
    path.write_text(model_card(folder, location))
    return path
