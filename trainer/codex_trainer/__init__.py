"""The Codex trainer: fine-tunes a causal LM from a CodexTrainingJob spec, on one machine or in a pod."""

__version__ = "0.1.0"
