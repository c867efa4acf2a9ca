"""A task's own config section, `tasks.<name>:` (tasks/base.py's TaskOptions): validated with
one-line errors, hashed only into the stages each knob feeds, listed by the stages' --help, and
the knobs' old places in the stage sections still read (with a warning naming the new key)."""

from __future__ import annotations

import warnings

import pytest

from modelworks import load_config
from modelworks.config import validate_config
from modelworks.errors import ConfigError
from modelworks.lifecycle import stage_hash
from modelworks.tasks import check_task_config, get_task, stage_options, task_options
from modelworks.tasks.base import Task, TaskOptions, option
from tests.conftest import ROOT, cli


def _cfg(*overrides: str):
    return load_config(ROOT / "configs" / "translation.yaml", list(overrides))


def test_options_read_from_their_section_with_defaults_for_the_rest():
    o = task_options(_cfg("tasks.translation.beam_size=2"))
    assert o.beam_size == 2 and o.length_penalty == 1.0 and o.prompt_template == "{source} =>"
    assert task_options(_cfg(), "recommendation").ks == [5, 10, 20]  # another task's defaults


def test_a_knob_changes_the_hash_of_the_stages_it_feeds_and_no_other():
    base, beam = _cfg(), _cfg("tasks.translation.beam_size=2")
    template = _cfg("tasks.translation.prompt_template=Q: {source} A:")
    hashes = {
        name: {s: stage_hash(c, s, stage_options(c, s)) for s in ("preprocess", "evaluate")}
        for name, c in (("base", base), ("beam", beam), ("template", template))
    }
    assert hashes["beam"]["preprocess"] == hashes["base"]["preprocess"]
    assert hashes["beam"]["evaluate"] != hashes["base"]["evaluate"]
    assert hashes["template"]["preprocess"] != hashes["base"]["preprocess"]
    assert hashes["template"]["evaluate"] == hashes["base"]["evaluate"]
    assert stage_options(beam, "evaluate") == {
        "tasks.translation": {"beam_size": 2, "length_penalty": 1.0, "bleu_tokenize": "auto"}
    }
    assert stage_options(beam, "collect") == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tasks.translation.beam_sise=2", "unknown key 'tasks.translation.beam_sise'; did you mean "
         "'tasks.translation.beam_size'?"),
        ("tasks.translation.beam_size=0", "tasks.translation.beam_size (got 0): Input should be "
         "greater than or equal to 1"),
        ("tasks.translatoin.beam_size=2", "tasks.translatoin: task 'translatoin' is not a known "
         "task"),
        ("tasks.translation=4", "tasks.translation (got 4): Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_bad_task_options_fail_in_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        _cfg(override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_cli_refuses_a_bad_task_option_before_any_work(tmp_path):
    proc = cli(
        "evaluate",
        str(ROOT / "configs" / "translation.yaml"),
        f"runs_dir={tmp_path}",
        "--tasks.translation.length_penalty",
        "-1",
        check=False,
    )
    assert proc.returncode == 2 and not any(tmp_path.iterdir())
    assert proc.stderr.strip().splitlines() == [
        "error: tasks.translation.length_penalty (got -1): Input should be greater than or "
        "equal to 0"
    ]


def test_help_lists_a_task_knob_under_the_stages_it_feeds():
    evaluate = cli("evaluate", "--help").stdout
    preprocess = cli("preprocess", "--help").stdout
    assert "--tasks.translation.beam_size" in evaluate and "beams of the beam search" in evaluate
    assert "--tasks.translation.beam_size" not in preprocess
    assert "--tasks.image_classification.image_size" in preprocess
    assert "--tasks.recommendation.loss" in cli("pretrain", "--help").stdout


def test_old_places_of_moved_knobs_still_work_and_name_the_new_key():
    data = {
        "task": "recommendation",
        "preprocess": {"min_user_interactions": 4},
        "pretrain": {"rec_loss": "bce"},
        "evaluate": {"ks": [1, 5]},
    }
    with pytest.warns(
        FutureWarning, match=r"pretrain\.rec_loss is now tasks\.recommendation\.loss"
    ):
        cfg = validate_config(data)
    o = task_options(cfg)
    assert (o.min_user_interactions, o.loss, o.ks) == (4, "bce", [1, 5])
    assert "min_user_interactions" not in cfg.preprocess.model_dump()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns about nothing
        validate_config({"task": "recommendation", "tasks": {"recommendation": {"loss": "bce"}}})


def test_one_knob_set_differently_in_two_old_places_is_refused():
    data = {"pretrain": {"augment_flip": True}, "finetune": {"augment_flip": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(ConfigError, match="both set tasks.image_classification.augment_flip"):
            validate_config(data)


def test_a_section_for_another_task_is_validated_too():
    cfg = _cfg()
    cfg.tasks["recommendation"] = {"ks": "ten"}
    with pytest.raises(ConfigError, match=r"tasks\.recommendation\.ks"):
        check_task_config(cfg)


def test_a_task_option_must_name_the_stage_it_feeds():
    class Untagged(TaskOptions):
        size: int = 3

    hooks = {h: (lambda *a, **k: None) for h in ("prepare", "setup_training", "evaluate")}
    with pytest.raises(ConfigError, match="options size name no stage"):
        Task(name="t", options=Untagged, **hooks)
    with pytest.raises(ConfigError, match="option stage"):
        option(1, stage="train", description="not a stage")


def test_every_registered_task_tags_every_option():
    for name in ("image_classification", "recommendation", "translation", "text_classification"):
        options = get_task(name).options
        assert options.model_fields, name
        assert all(options.stages_of(k) for k in options.model_fields)
