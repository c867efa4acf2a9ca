import re

import pytest

from modelworks.cli import main as cli_main
from modelworks.config import ConfigError, load_config
from tests.conftest import cli


def test_defaults_equal_quickstart_file():
    from tests.conftest import ROOT

    assert load_config(ROOT / "configs/quickstart.yaml") == load_config(None)


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["pretrain.lr=1e-3", "model.n_layer=2", "collect.sources.0.limit=5"])
    assert cfg.pretrain.lr == 1e-3
    assert cfg.model.n_layer == 2
    assert cfg.collect.sources[0].limit == 5


@pytest.mark.parametrize(
    "override, needle",
    [
        ("pretrain.lrr=1", "unknown key 'pretrain.lrr'"),
        ("pretrain.lr=abc", "pretrain.lr (got 'abc')"),
        ("pretrain.steps=0", "pretrain.steps (got 0)"),
        ("model.n_layr=3", "unknown key 'model.n_layr'"),
        ("model.n_layer=two", "model.n_layer (got 'two'): expected int"),
        ("model.n_head=3", "d_model=128 is not divisible by n_head=3"),
        ("model.name=nope", "'nope' is not a registered model"),
        ("preprocess.normalize=NFX", "preprocess.normalize (got 'NFX')"),
        ("name=../escape", "name (got '../escape')"),
        ("nonsense", "expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_that_does_not_parse(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+, column \d+: YAML does not parse"):
        load_config(bad)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_file_values_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: mine\npretrain:\n  steps: 7\n  warmup_steps: 2\n")
    cfg = load_config(f, ["pretrain.steps=9"])
    assert (cfg.name, cfg.pretrain.steps, cfg.pretrain.lr) == ("mine", 9, 3e-3)


def test_section_hash_changes_only_with_its_section():
    a = load_config(None)
    b = load_config(None, ["evaluate.max_new_tokens=3"])
    assert a.section_hash("pretrain", "model") == b.section_hash("pretrain", "model")
    assert a.section_hash("evaluate") != b.section_hash("evaluate")


def test_help_lists_every_option_with_default_and_description():
    out = cli("pretrain", "--help").stdout
    for needle in [
        "--pretrain.lr",
        "peak learning rate",
        "default: 0.003",
        "--model.n_kv_head",
        "grouped-query attention",
    ]:
        assert needle in out
    top = cli("--help").stdout
    assert "collect.sources" in top and "preprocess.vocab_size" in top and "serve.port" in top


def test_cli_bad_config_is_one_line_and_nonzero(tmp_path):
    proc = cli("run", "pretrain.lr=abc", f"runs_dir={tmp_path}", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: command line (pretrain.lr=abc): pretrain.lr (got 'abc'): Input should be a "
        "valid number, "
        "unable to parse string as a number"
    ]


@pytest.mark.parametrize(
    "preset, vocab, low, high",
    [
        ("gpt-tiny", 512, 0.05e6, 0.2e6),
        ("gpt-small", 4096, 10e6, 14e6),
        ("gpt-124m", 50304, 118e6, 130e6),
        ("llama-350m", 50304, 320e6, 380e6),
        ("llama-1b", 128256, 1.1e9, 1.4e9),
    ],
)
def test_model_presets_have_their_advertised_size(preset, vocab, low, high):
    import torch

    from modelworks.models.registry import build_model, model_config_from
    from tests.conftest import ROOT

    cfg = load_config([ROOT / "configs/quickstart.yaml", ROOT / f"configs/models/{preset}.yaml"])
    arch = model_config_from(cfg.model)
    arch.vocab_size, arch.context_len = vocab, cfg.pretrain.seq_len
    with torch.device("meta"):  # shapes only, no memory
        n = build_model(arch).num_params()
    assert low <= n <= high, n


def test_later_config_files_override_earlier_ones(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("pretrain: {steps: 5, lr: 0.1, warmup_steps: 0}\nmodel: {n_layer: 3}\n")
    b.write_text("pretrain: {steps: 7}\n")
    cfg = load_config([a, b])
    assert (cfg.pretrain.steps, cfg.pretrain.lr, cfg.model.n_layer) == (7, 0.1, 3)


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("pretrain.stesp=5", "did you mean 'pretrain.steps'?"),
        ("pretrian.steps=5", "did you mean 'pretrain'?"),
        ("finetune.fro=pretrain", "did you mean 'finetune.from'?"),
        ("collect.sources.0.typ=files", "did you mean 'collect.sources.0.type'?"),
        ("model.n_layr=3", "did you mean 'model.n_layer'?"),
        ("lr=0.1", "did you mean 'pretrain.lr' or 'finetune.lr'?"),
    ],
)
def test_unknown_key_is_blamed_on_the_command_line_with_a_suggestion(
    tmp_path, override, suggestion
):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(f"command line ({override}): unknown key")
    assert str(e.value).endswith(suggestion)
    # given with a file, the key is still the command line's, not the file's
    f = tmp_path / "c.yaml"
    f.write_text("pretrain: {steps: 50}\n")
    with pytest.raises(ConfigError, match=rf"^command line \({re.escape(override)}\)"):
        load_config(f, [override])


def test_unknown_key_in_a_file_is_blamed_on_that_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("pretrain: {stpes: 5}\n")
    b.write_text("pretrain: {lr: 0.01}\n")
    with pytest.raises(ConfigError) as e:
        load_config([a, b], ["pretrain.lr=0.02"])
    assert str(e.value) == f"{a}: unknown key 'pretrain.stpes'; did you mean 'pretrain.steps'?"


def test_unknown_flag_on_the_command_line_is_one_line_with_a_suggestion(capsys):
    assert cli_main(["pretrain", "--pretrain.stesp", "5", "--pretrain.lr=0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: command line (pretrain.stesp=5): unknown key 'pretrain.stesp'; "
        "did you mean 'pretrain.steps'?"
    ]


@pytest.mark.parametrize("section", ["pretrain", "finetune"])
def test_schedule_that_cannot_work_fails_at_load(section):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{section}.lr=1e-4", f"{section}.min_lr=1e-3"])
    assert str(e.value).startswith(f"command line ({section}.min_lr=1e-3): {section}.min_lr=")
    assert f"above {section}.lr=0.0001" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{section}.steps=10", f"{section}.warmup_steps=11"])
    assert f"{section}.warmup_steps=11 is more than {section}.steps=10" in str(e.value)
    # the edges are fine: warmup over every step, min_lr equal to lr, min_lr with no decay
    load_config(None, [f"{section}.steps=10", f"{section}.warmup_steps=10"])
    load_config(None, [f"{section}.lr=1e-3", f"{section}.min_lr=1e-3"])
    load_config(
        None, [f"{section}.lr=1e-4", f"{section}.min_lr=1e-3", f"{section}.schedule=constant"]
    )


def test_empty_config_file_is_refused_not_read_as_the_quickstart(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("# everything commented out\n# pretrain: {steps: 5}\n")
    with pytest.raises(ConfigError, match=r"mine.yaml is empty: .*give no config file to run the"):
        load_config(f)


def test_folder_given_as_config_file_says_folder(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert (
        str(e.value) == f"config file {tmp_path} is a folder, not a YAML file: name a file; "
        "it holds a.yaml"
    )
    assert "does not exist" not in str(e.value)


def test_configured_keys_are_the_ones_set(tmp_path):
    """What the planner asks to tell a configured run from defaults."""
    f = tmp_path / "c.yaml"
    f.write_text("model: {n_layer: 2}\n")
    assert "steps" not in load_config(f).pretrain.model_fields_set
    assert "steps" in load_config(f, ["pretrain.steps=50"]).pretrain.model_fields_set
