"""RunConfig: YAML loading with a model base file, `a.b=c` overrides, strict validation, round trip."""
import textwrap
from pathlib import Path

import pytest
import yaml

from pretrain.config import RESOLVED_CONFIG_NAME, load_run_config, run_config_from_dict
from pretrain.errors import ConfigError

MODEL_BASE = {"vocab_size": 38, "d_model": 32, "num_blocks": 2, "num_heads": 2}


def write_configs(tmp_path: Path, run_text: str) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "tiny.yaml").write_text(yaml.safe_dump(MODEL_BASE))
    (tmp_path / "runs").mkdir(exist_ok=True)
    path = tmp_path / "runs" / "run.yaml"
    path.write_text(textwrap.dedent(run_text))
    return path


RUN = """
model:
  base: models/tiny.yaml
  num_blocks: 3
data:
  modality: protein
  shards: /data/protein
train:
  out_dir: /runs/x
  lr: 3e-4
  zero_stage: 2
curriculum:
  stages:
    - {context_len: 256, micro_batch_size: 4, tokens: 1e6}
    - {context_len: 512, micro_batch_size: 2, tokens: 2000000}
"""


def test_base_file_is_inlined_and_fields_override_it(tmp_path):
    cfg = load_run_config(write_configs(tmp_path, RUN))
    assert cfg.model.d_model == 32 and cfg.model.num_blocks == 3 and cfg.model.vocab_size == 38
    assert cfg.train.lr == pytest.approx(3e-4)          # YAML 1.1 reads 3e-4 as a string
    assert cfg.curriculum.stages[0].tokens == 1_000_000
    assert cfg.train.zero_stage == 2 and cfg.train.grad_accum == 1  # default from the dataclass


def test_command_line_overrides_parse_yaml_values(tmp_path):
    cfg = load_run_config(write_configs(tmp_path, RUN), [
        "train.lr=0.002", "train.betas=[0.8, 0.99]", "model.d_model=64", "curriculum.stages.1.tokens=3000",
        "train.activation_checkpointing=true", "train.max_steps=null", "parallel.context_parallel_size=2"])
    assert cfg.train.lr == 0.002 and cfg.train.betas == [0.8, 0.99]
    assert cfg.model.d_model == 64 and cfg.curriculum.stages[1].tokens == 3000
    assert cfg.train.activation_checkpointing is True and cfg.train.max_steps is None
    assert cfg.parallel.context_parallel_size == 2


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr: expected float, got 'abc'"),
    ("train.zero_stage=two", "train.zero_stage: expected int, got 'two'"),
    ("train.lrr=0.1", "train.lrr: unknown key"),
    ("train.tensorboard=3", "train.tensorboard: expected bool"),
    ("curriculum.stages.0.context_len=1.5", "curriculum.stages.0.context_len: expected int, got 1.5"),
    ("curriculum.stages.0.ctx=8", "curriculum.stages.0.ctx: unknown key"),
    ("curriculum.stages.5.tokens=8", "curriculum.stages.5"),
    ("train.zero_stage=4", "train.zero_stage=4"),
    ("data.modality=rna", "data.modality='rna'"),
    ("model.d_model=x", "model: "),
    ("model.not_a_field=1", "not_a_field"),
    ("bogus.key=1", "unknown key 'bogus'"),
    ("train.lr", "expected key.sub=value"),
])
def test_bad_values_name_the_full_dotted_key(tmp_path, override, message):
    with pytest.raises(ConfigError) as error:
        load_run_config(write_configs(tmp_path, RUN), [override])
    assert message in str(error.value)
    assert error.value.user_facing is True


def test_tokens_per_step_must_stay_constant_across_stages(tmp_path):
    with pytest.raises(ConfigError, match=r"curriculum.stages.1: .*4096 tokens per step .* stage 0 has 1024"):
        load_run_config(write_configs(tmp_path, RUN), ["curriculum.stages.1.micro_batch_size=8"])
    # a stage may keep tokens per step constant through grad_accum instead of the micro-batch
    cfg = load_run_config(write_configs(tmp_path, RUN), ["curriculum.stages.1.micro_batch_size=1",
                                                         "curriculum.stages.1.grad_accum=2"])
    assert cfg.curriculum.stages[1].grad_accum == 2


def test_missing_base_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="model.base='models/none.yaml': not found"):
        load_run_config(write_configs(tmp_path, RUN.replace("models/tiny.yaml", "models/none.yaml")))


def test_a_key_given_twice_is_an_error_naming_file_line_and_key(tmp_path):
    path = write_configs(tmp_path, RUN.replace("  lr: 3e-4\n", "  lr: 3e-4\n  lr: 1e-3\n"))
    with pytest.raises(ConfigError, match=r"run\.yaml line 11 column 3: .*key 'lr' appears twice"):
        load_run_config(path)
    path = write_configs(tmp_path, RUN)
    (tmp_path / "models" / "tiny.yaml").write_text("vocab_size: 38\nd_model: 32\nd_model: 64\n")
    with pytest.raises(ConfigError, match=r"tiny\.yaml line 3 .*key 'd_model' appears twice"):
        load_run_config(path)


def test_resolved_config_round_trips_through_the_saved_yaml(tmp_path):
    cfg = load_run_config(write_configs(tmp_path, RUN), ["train.weight_decay=0.05"])
    saved = cfg.save(tmp_path / "run")
    assert saved.name == RESOLVED_CONFIG_NAME
    again = run_config_from_dict(yaml.safe_load(saved.read_text()))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert again.config_hash() == cfg.config_hash()
    assert "base" not in yaml.safe_load(saved.read_text())["model"]   # stands alone
    changed = run_config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "lr": 1e-3}})
    assert changed.config_hash() != cfg.config_hash()


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_loads_and_validates(path):
    cfg = load_run_config(path)
    assert cfg.curriculum.stages and cfg.model.to_dict()


def test_prot_xlstm_102m_walks_2_11_to_2_18_at_constant_tokens_per_step():
    """DESIGN.md section 8: transitions at 7.9, 13.8, 20.6, 29.7, 34.7, 45.9, 60.0 B tokens."""
    from pretrain.curriculum import Curriculum

    cfg = load_run_config(REPO / "configs" / "prot_xlstm_102m.yaml")
    plan = Curriculum(cfg.curriculum.stages, cfg.train.grad_accum, dp_size=8)
    assert [s.context_len for s in plan.stages] == [2 ** k for k in range(11, 19)]
    assert plan.tokens_per_step == 2 ** 18 * 8
    # each stage ends at the first step boundary at or after its budget: stage k starts late by
    # less than one step per earlier stage
    for k, expected in enumerate([7.9e9, 13.8e9, 20.6e9, 29.7e9, 34.7e9, 45.9e9, 60.0e9], start=1):
        assert 0 <= plan.stages[k].start_tokens - expected < k * plan.tokens_per_step
    assert cfg.train.lr == 6e-4 and cfg.train.betas == [0.9, 0.95] and cfg.train.schedule == "constant"
    assert cfg.train.activation_checkpointing


def test_checkpoint_model_config_from_before_newer_keys_still_resumes():
    """A train state written before a ModelConfig key existed lacks it; the key's default keeps the
    former meaning, so the resume check compares the normalized configs and passes. A real
    difference is still refused, naming the key."""
    from types import SimpleNamespace

    from modeling import ModelConfig
    from pretrain.errors import CheckpointError
    from pretrain.resume import check_compatible

    current = ModelConfig(d_model=32, num_heads=2).to_dict()
    old = {k: v for k, v in current.items() if k not in ("gates_after_rope", "norm_weight_offset",
                                                          "bidirectional_residual", "proj_rounding")}
    state = SimpleNamespace(model_config=current, world_size=1)
    check_compatible({"model_config": old, "world_size": 1}, state, "ckpt")
    with pytest.raises(CheckpointError, match="model.gates_after_rope"):
        check_compatible({"model_config": old, "world_size": 1},
                         SimpleNamespace(model_config={**current, "gates_after_rope": True}, world_size=1), "ckpt")
