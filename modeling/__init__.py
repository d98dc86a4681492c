"""xLSTM models: blocks, Bio variants, heads, configs, recurrent step inference."""
