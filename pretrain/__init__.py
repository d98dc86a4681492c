"""DeepSpeed ZeRO trainer, curriculum, checkpoints, logging, export."""
