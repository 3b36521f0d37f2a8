"""Bad input: one clear line naming the file and row (or the setting), exit code 2, before any work."""

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_examples, write_tsv
from speedy.cli import app
from speedy.data.readers import read_labelled_texts
from speedy.errors import SpeedyError

runner = CliRunner()


def run_study(tmp_path, files=None, teachers=None, **overrides):
    config = {"name": "bad", "output_dir": str(tmp_path / "out"),
              "tasks": [{"name": "t", "data": files or {}}],
              "teachers": teachers or [{"name": "t", "base": str(tmp_path)}]}
    config.update(overrides)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["run", str(path)])
    return result


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path, tiny_files):
    files = dict(tiny_files, test=str(tmp_path / "nope.tsv"))
    assert_one_line_error(run_study(tmp_path, files), "nope.tsv", "file not found")


def test_malformed_row_names_file_and_line(tmp_path, tiny_files):
    bad = tmp_path / "validation.tsv"
    bad.write_text("label\ttext\ndeporte\tEl equipo ganó.\ndeporte\tuno\tdos\n", "utf-8")
    assert_one_line_error(run_study(tmp_path, dict(tiny_files, validation=str(bad))), "validation.tsv:3",
                          "malformed row")


def test_a_data_error_creates_no_store_and_no_output_folder(tmp_path, tiny_files):
    bad = tmp_path / "validation.tsv"
    bad.write_text("label\ttext\ndeporte\tuno\tdos\n", "utf-8")
    assert_one_line_error(run_study(tmp_path, dict(tiny_files, validation=str(bad))), "validation.tsv:2")
    assert not (tmp_path / "out").exists()


def test_label_absent_from_the_label_set(tmp_path, tiny_files):
    rows = make_examples(6, seed=9) + [("cultura", "El museo abrió una sala nueva.")]
    bad = write_tsv(tmp_path / "test.tsv", rows)
    assert_one_line_error(run_study(tmp_path, dict(tiny_files, test=bad)), "test.tsv:8", "'cultura'")


def test_empty_split(tmp_path, tiny_files):
    empty = tmp_path / "empty.tsv"
    empty.write_text("label\ttext\n", "utf-8")
    assert_one_line_error(run_study(tmp_path, dict(tiny_files, train=str(empty))), "empty.tsv", "no examples")


def test_text_pair_with_a_missing_side(tmp_path):
    good = tmp_path / "pairs.tsv"
    good.write_text("label\tsentence1\tsentence2\nsi\tHola.\tBuenas.\nno\tAdiós.\t \n", "utf-8")
    files = {"train": str(good), "validation": str(good), "test": str(good), "text": "sentence1",
             "text_pair": "sentence2"}
    assert_one_line_error(run_study(tmp_path, files), "pairs.tsv:3", "second text of the pair")


def test_non_utf8_file_names_the_line(tmp_path, tiny_files):
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes("label\ttext\ndeporte\tEl equipo ganó.\n".encode("latin-1"))
    assert_one_line_error(run_study(tmp_path, dict(tiny_files, train=str(bad))), "latin1.tsv:2", "UTF-8")


def test_unknown_model_name(tmp_path, tiny_files):
    result = run_study(tmp_path, tiny_files, teachers=[{"name": "beto-cassed"}])
    assert_one_line_error(result, "teachers[0].base", "beto-cassed", "beto-cased")


def test_unknown_setting_and_empty_grid_axis(tmp_path, tiny_files, bert_dir):
    teachers = [{"name": "b", "base": str(bert_dir)}]
    assert_one_line_error(run_study(tmp_path, tiny_files, teachers, grid={"batch": [8]}),
                          "study.yaml: grid.batch: unknown setting", "batch_size")
    assert_one_line_error(run_study(tmp_path, tiny_files, teachers, grid={"learning_rate": []}),
                          "grid.learning_rate", "empty axis")
    assert_one_line_error(run_study(tmp_path, tiny_files, teachers, distill={"loss": "cosine"}), "distill.loss",
                          "kl, ce, mse")


def test_missing_config_file():
    result = runner.invoke(app, ["run", "no-such-study.yaml"])
    assert_one_line_error(result, "no-such-study.yaml", "not found")


def test_nothing_finished_is_lost_on_a_bad_later_stage(tmp_path, tiny_files, bert_dir):
    """A config error found when a stage starts leaves the store's finished trials in place."""
    teachers = [{"name": "b", "base": str(bert_dir)}]
    grid = {"batch_size": [16], "epochs": [1], "learning_rate": [1e-3]}
    config = {"name": "bad", "output_dir": str(tmp_path / "out"), "tasks": [{"name": "t", "data": tiny_files}],
              "teachers": teachers, "grid": grid}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    assert runner.invoke(app, ["finetune", str(path)]).exit_code == 0
    broken = dict(config, students=[{"name": "s", "base": str(bert_dir), "kind": "truncate", "layers": [3, 9]}])
    path.write_text(yaml.safe_dump(broken))
    runner.invoke(app, ["select", str(path)])
    assert_one_line_error(runner.invoke(app, ["distill", str(path)]), "students[0].layers", "4 layers")
    from speedy.configfile import load_config
    from speedy.pipeline import Study

    assert len(Study(load_config(path)).store.trials("finetune")) == 1


def test_reader_requires_named_columns(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"texto": "hola", "label": "a"}\n', "utf-8")
    with pytest.raises(SpeedyError, match=r"x.jsonl:1: no column 'text'"):
        read_labelled_texts(path)
