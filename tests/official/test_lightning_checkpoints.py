"""DNA-xLSTM checkpoints as the official training writes them (PyTorch Lightning 1.8.6 + hydra):
hyper_parameters a real omegaconf 2.3 DictConfig, hparams_type its class, loops, callbacks,
optimizer and scheduler states beside the weights, saved with torch.save. They convert to the
source weights' logits, with or without omegaconf installed; any other global in the pickle is
refused by name and nothing in the file runs."""
import collections
import json
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.nodes import BooleanNode, BytesNode, FloatNode, IntegerNode, PathNode, StringNode

from pretrain.errors import ConversionError
from pretrain.official.convert import convert_official
from pretrain.official.safe_unpickle import RefusedGlobal, loads, plain
from tests.official import official_reference as ref
from tests.official.helpers import converted_logits, rel_err
from tests.official.test_convert_dnaxlstm import (
    D, HEADS, SLSTM_HEADS, VARIANTS, dna_ids, official_config, official_state,
)

REPO = Path(__file__).resolve().parents[2]


def training_states(seed=0):
    """A real AdamW state after two steps and its LambdaLR scheduler, as Lightning stores them."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]
    optimizer = torch.optim.AdamW(params, lr=8e-3, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    for _ in range(2):
        sum((p ** 2).sum() for p in params).backward()
        optimizer.step()
        scheduler.step()
    return optimizer.state_dict(), scheduler.state_dict()


def lightning_checkpoint(path, state, config, hyper_parameters=True):
    """What Lightning 1.8.6 `dump_checkpoint` writes for the official DNA-xLSTM run."""
    optimizer_state, scheduler_state = training_states()
    state_dict = collections.OrderedDict(("model.backbone." + k, v) for k, v in state.items())
    state_dict._metadata = collections.OrderedDict([("", {"version": 1}), ("model.backbone", {"version": 1})])
    ckpt = {
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.8.6",
        "state_dict": state_dict,                              # as nn.Module.state_dict() returns it
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 1200},
                               "epoch_loop.batch_progress": {"total": {"ready": 1200, "completed": 1200},
                                                             "is_last_batch": False}},
                  "validate_loop": {"state_dict": {}, "dataloader_progress": {"total": {"ready": 4}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}": {
                "monitor": "val/loss", "best_model_score": torch.tensor(1.21), "current_score": torch.tensor(1.3),
                "best_model_path": "outputs/checkpoints/val/loss.ckpt", "dirpath": "outputs/checkpoints",
                "best_k_models": {"outputs/checkpoints/val/loss.ckpt": torch.tensor(1.21)},
                "kth_best_model_path": "outputs/checkpoints/val/loss.ckpt", "kth_value": torch.tensor(1.21),
                "last_model_path": "outputs/checkpoints/last.ckpt"},
            "LearningRateMonitor": {}},
        "optimizer_states": [optimizer_state],
        "lr_schedulers": [scheduler_state],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 17},
    }
    if hyper_parameters:
        hydra = OmegaConf.create({
            "model": {"_name_": "xlstm_lm", "config": dict(config, max_length="${dataset.max_length}",
                                                           vocab_size="${dataset.vocab_size}")},
            "dataset": {"_name_": "hg38", "max_length": 1024, "vocab_size": config["vocab_size"], "mlm": True,
                        "bed_file": PathNode(Path("data/hg38/human-sequences.bed"))},
            "trainer": {"max_steps": 10000, "precision": 16, "devices": 1},
            "optimizer": {"_name_": "adamw", "lr": 8e-3, "betas": [0.9, 0.95]},
            "train": {"seed": 2222, "monitor": "val/loss", "ckpt": None}})
        ckpt["hyper_parameters"] = hydra
        ckpt["hparams_type"] = type(hydra)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def reference_spec(variant):
    kinds, _, spec = VARIANTS[variant]
    return dict(spec, kinds=list(kinds), heads=HEADS, slstm_heads=SLSTM_HEADS, rope="head", theta=5e5)


@pytest.mark.parametrize("variant", ["rcps_slstm", "mlstm_slstm"])
def test_lightning_checkpoint_converts_to_the_source_logits(tmp_path, variant):
    kinds, overrides, spec = VARIANTS[variant]
    state = official_state(kinds, seed=3, rcps=spec.get("rcps", False))
    src = lightning_checkpoint(tmp_path / "outputs" / "checkpoints" / "last.ckpt", state,
                               official_config(kinds, **overrides))
    with pytest.raises(Exception, match="Unsupported global"):          # what the former loader met
        torch.load(src, weights_only=True)
    out = convert_official("dnaxlstm", src, tmp_path / "export")
    ids = dna_ids(7)
    assert rel_err(converted_logits(out, ids)[0], ref.forward(state, reference_spec(variant), ids)) <= 1e-10


def test_the_same_file_converts_with_omegaconf_absent(tmp_path):
    kinds, overrides, spec = VARIANTS["rcps_slstm"]
    state = official_state(kinds, seed=4, rcps=True)
    src = lightning_checkpoint(tmp_path / "last.ckpt", state, official_config(kinds, **overrides))
    script = (
        "import sys; sys.modules['omegaconf'] = None\n"          # any import of omegaconf fails
        "from pretrain.official.convert import convert_official\n"
        f"convert_official('dnaxlstm', {str(src)!r}, {str(tmp_path / 'export')!r})\n"
        "try:\n    import omegaconf\nexcept ImportError:\n    print('omegaconf absent')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "omegaconf absent" in run.stdout
    ids = dna_ids(8)
    logits, _ = converted_logits(tmp_path / "export", ids)
    assert rel_err(logits, ref.forward(state, reference_spec("rcps_slstm"), ids)) <= 1e-10


def test_omegaconf_configs_read_as_plain_data():
    # independent answer: omegaconf's own to_container, interpolations resolved
    config = OmegaConf.create({
        "a": {"b": [1, 2.5, "x", None, {"c": "${...d}"}], "d": "${e}", "empty": DictConfig(None)},
        "e": 7, "s": StringNode("q"), "i": IntegerNode(3), "f": FloatNode(0.5), "t": BooleanNode(False),
        "by": BytesNode(b"\x00\xff"), "p": PathNode(Path("/data/x.bed")), "rel": "${.e}", "m": "???",
        "nested": {"deep": {"up": "${...e}", "abs": "${a.b.1}"}}})
    expected = OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    expected["p"] = str(expected["p"])
    ours = plain(loads(pickle.dumps({"hp": config, "type": type(config)}, protocol=2)))
    assert ours == {"hp": expected, "type": "omegaconf.dictconfig.DictConfig"}
    assert expected["a"]["b"][4]["c"] == 7 and expected["nested"]["deep"]["abs"] == 2.5      # resolved


class Payload:
    """Pickles as a call of `func(*args)`: what a malicious checkpoint holds."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def stack_global_call(module: str, name: str, arg: str) -> bytes:
    """Protocol-4 bytes calling module.name(arg) via STACK_GLOBAL with a dotted name."""
    text = lambda s: b"\x8c" + bytes([len(s.encode())]) + s.encode()   # noqa: E731  SHORT_BINUNICODE
    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(arg) + b"\x85R."


@pytest.mark.parametrize("payload,name", [
    (lambda marker: Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
    (lambda marker: Payload(eval, f"open({str(marker)!r}, 'w').close()"), "builtins.eval"),
    (lambda marker: Payload(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
    (lambda marker: Payload(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
])
def test_checkpoint_naming_another_global_is_refused_and_nothing_runs(tmp_path, payload, name):
    marker = tmp_path / "MUST_NOT_EXIST"
    state = official_state("mm")
    src = lightning_checkpoint(tmp_path / "last.ckpt", state, official_config("mm"))
    ckpt = torch.load(src, weights_only=False)                 # our own file: rebuilt to add the payload
    ckpt["callbacks"]["Evil"] = {"state": payload(marker)}       # after the omegaconf objects in the pickle
    torch.save(ckpt, src)
    torch.load(src, weights_only=False)                        # control: an ordinary load runs the payload
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ConversionError, match=rf"needs the Python global {name}, which is not plain data") as info:
        convert_official("dnaxlstm", src, tmp_path / "export")
    assert "\n" not in str(info.value)
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_dotted_names_cannot_reach_through_an_allowed_module(tmp_path):
    marker = tmp_path / "MUST_NOT_EXIST"
    data = stack_global_call("pathlib", "os.system", f"touch {marker}")
    assert "STACK_GLOBAL" in "".join(str(op[0].name) for op in pickletools.genops(data))   # well-formed
    with pytest.raises(RefusedGlobal, match="pathlib.os.system"):
        loads(data)
    with pytest.raises(RefusedGlobal, match="omegaconf.dictconfig.DictConfig.__init__"):
        loads(stack_global_call("omegaconf.dictconfig", "DictConfig.__init__", "x"))
    assert not marker.exists()


def test_attributes_are_set_only_on_omegaconf_objects_and_state_dicts():
    # BUILD with slot state would setattr on anything: here an allowed torch function's defaults
    from pretrain.official.safe_unpickle import Refused

    text = lambda s: b"\x8c" + bytes([len(s.encode())]) + s.encode()   # noqa: E731
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    data = (b"\x80\x04" + text("torch._utils") + text("_rebuild_tensor_v2") + b"\x93"   # the function
            + b"N}" + text("__defaults__") + b"K\x07\x85s\x86b.")                       # (None, {...}) BUILD
    assert [op.name for op, _, _ in pickletools.genops(data)][-2:] == ["BUILD", "STOP"]
    with pytest.raises(Refused, match="sets attributes of a function"):
        loads(data)
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ConversionError, match="TorchScript archive"):
        convert_official("dnaxlstm", path, tmp_path / "export")


def test_model_config_json_beside_the_checkpoint(tmp_path):
    state = official_state("mm")
    config = official_config("mm")
    run = tmp_path / "released"
    src = lightning_checkpoint(run / "last.ckpt", state, config, hyper_parameters=False)
    (run / "model_config.json").write_text(json.dumps(config))             # the bare xLSTMConfig keys
    out = convert_official("dnaxlstm", src, tmp_path / "from_json")
    ids = dna_ids(9)
    spec = dict(kinds=["m", "m"], heads=HEADS, rope="head", theta=5e5)
    assert rel_err(converted_logits(out, ids)[0], ref.forward(state, spec, ids)) <= 1e-10
    assert "model_config.json" in (out / "README.md").read_text()

    both = lightning_checkpoint(tmp_path / "both" / "last.ckpt", state, config)
    beside = tmp_path / "both" / "model_config.json"
    beside.write_text(json.dumps({"_name_": "xlstm_lm", "config": dict(config, max_length=4096)}))
    convert_official("dnaxlstm", both, tmp_path / "agree")                 # max_length does not change the model
    beside.write_text(json.dumps({"_name_": "xlstm_lm", "config": dict(config, d_model=2 * D)}))
    with pytest.raises(ConversionError, match=rf"model_config.json: d_model={2 * D} but .*hyper_parameters"
                                              rf".model.config has d_model={D}") as info:
        convert_official("dnaxlstm", both, tmp_path / "disagree")
    assert "\n" not in str(info.value) and not (tmp_path / "disagree").exists()


@pytest.mark.parametrize("damage,needle", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a torch zip checkpoint"),
    (lambda p: p.write_bytes(os.urandom(4096)), "not a torch zip checkpoint"),
    (lambda p: torch.save(torch.load(p, weights_only=False), p, _use_new_zipfile_serialization=False),
     "not a torch zip checkpoint"),
])
def test_damaged_or_legacy_files_are_refused_in_one_line(tmp_path, damage, needle):
    src = lightning_checkpoint(tmp_path / "last.ckpt", official_state("mm"), official_config("mm"))
    damage(src)
    with pytest.raises(ConversionError, match=needle) as info:
        convert_official("dnaxlstm", src, tmp_path / "export")
    assert "\n" not in str(info.value) and not (tmp_path / "export").exists()
