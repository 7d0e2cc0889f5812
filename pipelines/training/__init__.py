"""Distributed training of a product line's model (Horovod workers, exported SavedModel)."""
