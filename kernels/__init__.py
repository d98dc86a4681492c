"""Chunkwise mLSTM kernels (Triton + float64 torch reference) and state passing."""
