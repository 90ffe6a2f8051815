"""ELECTRA in PyTorch: pre-training text encoders as discriminators, fine-tuning and serving them."""

__version__ = "0.1.0"
