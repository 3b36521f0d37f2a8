"""The paper's study as one config: its models and grids, the plan of every trial, and the KD grid's best point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from speedy.cli import app
from speedy.configfile import load_config
from speedy.models.registry import ARCHITECTURES, HUB_MODELS, PAPER_LEARNING_RATES
from speedy.plan import plan

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"


def test_paper_config_names_every_dataset_model_and_grid_of_the_paper():
    config = load_config(PAPER)
    assert [t.data.dataset for t in config.tasks] == ["mldoc", "pawsx-es", "xnli-es", "ancora-pos", "conll2002-es",
                                                      "mlqa-es", "sqac", "tar-xquad"]
    assert [t.type for t in config.tasks] == ["classification"] * 3 + ["tagging"] * 2 + ["qa"] * 3
    assert {t.name for t in config.teachers} == set(HUB_MODELS)
    for teacher in config.teachers:
        assert teacher.learning_rate == PAPER_LEARNING_RATES[teacher.name]
    assert PAPER_LEARNING_RATES["albeto-xxlarge"] == [1e-6, 2e-6, 3e-6, 4e-6, 5e-6]
    assert PAPER_LEARNING_RATES["beto-cased"] == [1e-5, 2e-5, 3e-5, 4e-5, 5e-5]
    students = {s.name: s for s in config.students}
    assert students["albeto-tiny-student"].base == "albeto-tiny"
    assert [(s.kind, s.layers) for n, s in students.items() if n.startswith("albeto-base")] == \
        [("albert-base-n", n) for n in (2, 4, 6, 8, 10)]
    assert (config.distill.learning_rate, config.distill.batch_size) == ([5e-5, 1e-4], [16, 32, 64])
    assert (config.distill.epochs, config.distill.patience, config.distill.loss) == (50, 10, "kl")
    assert (config.grid.batch_size, config.grid.epochs) == ([16, 32, 64], [2, 3, 4])


def test_plan_lists_every_trial_with_its_compute():
    trials = plan(load_config(PAPER))
    finetune = [t for t in trials if t.stage == "finetune"]
    distill = [t for t in trials if t.stage == "distill"]
    assert len(finetune) == 8 * 11 * 3 * 3 * 5  # tasks x teachers x batch x epochs x rates
    assert len(distill) == 8 * 6 * 2 * 3 * 2  # tasks x students x (KD, fine-tuned) x batch x rates
    assert all(t.training_macs and t.training_macs > 0 for t in trials)
    by_name = {(t.task, t.settings): t for t in trials}
    xxlarge = by_name[("conll2002-es", "albeto-xxlarge bs=16 ep=2 lr=1e-06")]
    tiny = by_name[("conll2002-es", "albeto-tiny bs=16 ep=2 lr=1e-05")]
    assert xxlarge.training_macs > 100 * tiny.training_macs
    base2 = by_name[("conll2002-es", "albeto-base-2 (KD) bs=16 lr=5e-05")]
    base4 = by_name[("conll2002-es", "albeto-base-4 (KD) bs=16 lr=5e-05")]
    assert base2.forward_macs < base4.forward_macs  # same weights, fewer layers run


def test_run_plan_prints_the_trials_and_runs_nothing(tmp_path):
    config = yaml.safe_load(PAPER.read_text("utf-8"))
    config["output_dir"] = str(tmp_path / "out")
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(config), "utf-8")
    result = subprocess.run([sys.executable, "-m", "speedy", "run", str(tmp_path / "paper.yaml"), "--plan"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("todo ")]
    assert len(lines) == 4536
    assert "4536 trials" in result.stdout and "PMAC" in result.stdout
    assert not (tmp_path / "out").exists()  # no store, no data, nothing run


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["tasks"][0]["data"].update(dataset="mldocs"), "tasks[0].data.dataset: unknown dataset 'mldocs'"),
    (lambda c: c["teachers"].append({"name": "beto-large"}), "teachers[11].base: unknown model 'beto-large'"),
    (lambda c: c["tasks"][0].update(type="ner"), "tasks[0].type: unknown task type 'ner'"),
    (lambda c: c["distill"].update(batch_size=[]), "distill.batch_size: the grid has an empty axis"),
    (lambda c: c["distill"].update(mixed_precision="fp8"), "distill.mixed_precision: unknown 'fp8'"),
    (lambda c: c.update(store="postgresql+psycopg://nobody@127.0.0.1:1/none"), "cannot open the experiment store"),
])
def test_bad_paper_configs_fail_before_any_work(tmp_path, edit, message):
    config = yaml.safe_load(PAPER.read_text("utf-8"))
    config["output_dir"] = str(tmp_path / "out")
    edit(config)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config), "utf-8")
    result = CliRunner().invoke(app, ["finetune", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "trials").exists()


def test_every_paper_model_has_a_known_shape():
    assert set(HUB_MODELS) <= set(ARCHITECTURES)


def test_small_compute_is_shown_in_significant_digits_not_rounded_to_zero():
    from speedy.plan import pmac

    assert pmac(2.4e13) == "0.024"  # a small embedding study's teacher cache: not "0.0"
    assert pmac(3.2e15) == "3.2" and pmac(1.234e14) == "0.1"
    assert pmac(0) == "0.0" and pmac(3.258e20) == "325,800"
