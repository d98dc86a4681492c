"""Prot-xLSTM checkpoints (DESIGN.md section 11): official layout -> export -> the same logits as
a float64 implementation of the official forward, and back to byte-identical tensors."""
import json

import pytest
import torch

from pretrain.errors import ConversionError
from pretrain.official.convert import convert_official, export_official
from tests.official import official_reference as ref
from tests.official.helpers import assert_byte_identical, converted_logits, rel_err

D, HEADS, BLOCKS, VOCAB, THETA = 48, 2, 2, 38, 500000
INNER = ref.inner_dim(D, 2.0, 64, up=True)          # 96 rounded up to 128: rounding is exercised
SPEC = dict(kinds=["m"] * BLOCKS, heads=HEADS, rope="inner", theta=THETA)


def official_config(**top):
    mlstm = {"conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "num_heads": HEADS, "proj_factor": 2.0,
             "round_proj_up_to_multiple_of": 64, "round_proj_up_dim_up": True, "_proj_up_dim": INNER,
             "embedding_dim": D, "bias": False, "dropout": 0.0, "context_length": 2048,
             "backend": "chunkwise", "chunk_size": 1024, "return_last_state": False,
             "_num_blocks": BLOCKS, "_inner_embedding_dim": INNER}
    config = {"mlstm_block": {"mlstm": mlstm}, "context_length": 2048, "num_blocks": BLOCKS,
              "embedding_dim": D, "add_post_blocks_norm": True, "bias": False, "dropout": 0.0,
              "checkpoint_blocks": True, "_block_map": "0,0", "vocab_size": VOCAB, "tie_weights": False,
              "weight_decay_on_embedding": False, "add_embedding_dropout": False,
              "position_embeddings": "rot_1d", "max_position_embeddings": 2048,
              "max_seq_position_embeddings": 512, "rope_base_frequency": THETA}
    config.update(top)
    return config


def official_state(seed=0, tie=False):
    g = torch.Generator().manual_seed(seed)
    blocks = [ref.mlstm_block_tensors(g, D, INNER, HEADS, 4, 4, bias=False) for _ in range(BLOCKS)]
    state = ref.model_tensors(g, VOCAB, D, blocks)
    if tie:
        state["lm_head.weight"] = state["token_embedding.weight"]
    return state


def write_official(root, state, config, layout="pytorch_model.bin", dtype=torch.float64):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    weights = {"backbone." + k: v.to(dtype) for k, v in state.items()}
    if layout == "pytorch_model.bin":
        torch.save(weights, root / layout)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in weights.items() if not (k.endswith("lm_head.weight") and
                   config.get("tie_weights"))}, str(root / layout))
    return root


def batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(4, 24, (2, 14), generator=g)
    ids[:, 0] = ids[:, 6] = 0                                   # <cls> starts each sequence
    positions = torch.tensor([list(range(6)) + list(range(8))] * 2)   # restart at each <cls>
    return ids, positions


@pytest.mark.parametrize("layout,tie", [("pytorch_model.bin", False), ("model.safetensors", False),
                                        ("pytorch_model.bin", True)])
def test_converted_prot_xlstm_gives_the_official_logits(tmp_path, layout, tie):
    state = official_state(tie=tie)
    src = write_official(tmp_path / "official", state, official_config(tie_weights=tie), layout)
    out = convert_official("protxlstm", src, tmp_path / "export")
    ids, positions = batch()
    logits, model = converted_logits(out, ids, positions)
    assert model.config.gates_after_rope and model.config.inner_dim == INNER
    assert rel_err(logits, ref.forward(state, SPEC, ids, positions)) <= 1e-10
    assert "ml-jku/Prot-xLSTM" in (out / "README.md").read_text() and str(src) in (out / "README.md").read_text()


def test_gates_before_rope_would_be_another_model(tmp_path):
    # the comparison above can fail: the same weights with the gates taken before RoPE
    from modeling import ModelConfig, build_model
    from safetensors.torch import load_file

    state = official_state()
    out = convert_official("protxlstm", write_official(tmp_path / "o", state, official_config()), tmp_path / "e")
    cfg = json.loads((out / "config.json").read_text())
    model = build_model(ModelConfig.from_dict({**cfg, "gates_after_rope": False, "kernel_backend": "reference"})).double()
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    ids, positions = batch()
    assert rel_err(model(ids, position_ids=positions), ref.forward(state, SPEC, ids, positions)) > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_writes_byte_identical_tensors(tmp_path, dtype):
    state = official_state(seed=3)
    src = write_official(tmp_path / "official", state, official_config(), dtype=dtype)
    out = convert_official("protxlstm", src, tmp_path / "export")
    back = export_official(out, tmp_path / "back", "protxlstm")
    original = torch.load(src / "pytorch_model.bin", weights_only=True)
    assert_byte_identical(torch.load(back / "pytorch_model.bin", weights_only=True), original)
    again = convert_official("protxlstm", back, tmp_path / "again")
    assert json.loads((again / "config.json").read_text()) == json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("change,needle", [
    (dict(position_embeddings="abs_2d"), "position_embeddings='abs_2d'"),
    (dict(position_embeddings="rot_2d"), "position_embeddings='rot_2d'"),
    (dict(add_post_blocks_norm=False), "add_post_blocks_norm"),
    (dict(vocab_size=40), "vocab_size=40"),
    (dict(bogus_option=1), r"unknown official config key\(s\) \['bogus_option'\]"),
    (dict(num_blocks="two"), "num_blocks='two' must be an integer"),
])
def test_unsupported_official_config_is_refused_by_name(tmp_path, change, needle):
    src = write_official(tmp_path / "official", official_state(), official_config(**change))
    with pytest.raises(ConversionError, match=needle):
        convert_official("protxlstm", src, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def _truncate(root):
    data = (root / "pytorch_model.bin").read_bytes()
    (root / "pytorch_model.bin").write_bytes(data[: len(data) // 2])


class NotATensor:
    pass


def _smuggle_object(root):
    torch.save({"backbone.token_embedding.weight": NotATensor()}, root / "pytorch_model.bin")


def _drop_tensor(root):
    state = torch.load(root / "pytorch_model.bin", weights_only=True)
    del state["backbone.xlstm_block_stack.blocks.1.xlstm.learnable_skip"]
    torch.save(state, root / "pytorch_model.bin")


def _reshape_tensor(root):
    state = torch.load(root / "pytorch_model.bin", weights_only=True)
    state["backbone.xlstm_block_stack.blocks.0.xlstm.mlstm_cell.igate.weight"] = torch.zeros(3, 3 * INNER)
    torch.save(state, root / "pytorch_model.bin")


def _second_weights_file(root):
    (root / "model.safetensors").write_bytes(b"x")


def _other_family(root):
    state = torch.load(root / "pytorch_model.bin", weights_only=True)
    torch.save({"model." + k[len("backbone."):]: v for k, v in state.items()}, root / "pytorch_model.bin")


@pytest.mark.parametrize("damage,needle", [
    (_truncate, "not a readable torch checkpoint"),
    (_smuggle_object, r"torch.load\(weights_only=True\) refuses"),
    (_drop_tensor, r"missing \['xlstm_block_stack.blocks.1.xlstm.learnable_skip'\]"),
    (_reshape_tensor, "wrong shape"),
    (_second_weights_file, "exactly one weights file"),
    (_other_family, "not under the official prefix 'backbone.'"),
])
def test_damaged_or_mismatched_files_are_refused(tmp_path, damage, needle):
    src = write_official(tmp_path / "official", official_state(), official_config())
    damage(src)
    with pytest.raises(ConversionError, match=needle) as info:
        convert_official("protxlstm", src, tmp_path / "export")
    assert info.value.user_facing and "\n" not in str(info.value)
    assert not (tmp_path / "export").exists()
