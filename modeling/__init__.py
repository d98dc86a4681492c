"""xLSTM models: blocks, Bio variants, heads, configs, recurrent step inference.

    from modeling import ModelConfig, build_model, flops_per_token
    model = build_model(ModelConfig.from_dict(yaml_dict))
    logits = model(input_ids, position_ids=None)              # (B, S) -> (B, S, V)
    state = model.init_state(batch_size)
    logits_t, state = model.step(token_ids, state)            # causal models only
"""
from modeling.config import ModelConfig
from modeling.errors import (
    ContextParallelError, ModelConfigError, ModelingError, ModelInputError, StepModeError,
)
from modeling.flops import flops_per_token
from modeling.model import XLSTMModel, build_model
from modeling.presets import load_model_config

__all__ = [
    "ModelConfig", "build_model", "flops_per_token", "XLSTMModel", "load_model_config",
    "ModelingError", "ModelConfigError", "ModelInputError", "StepModeError", "ContextParallelError",
]
