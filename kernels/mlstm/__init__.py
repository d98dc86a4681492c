"""mLSTM cell kernels: references, torch chunkwise, Triton (kernels.mlstm.autograd), step,
state passing across segments, and the backend registry."""
