"""reviewlm: filter review dumps, fine-tune DistilBERT and score mask predictions on Ray."""

__version__ = "0.1.0"
