"""The Codex Kubernetes operator (kopf). It imports the spec models from codex_trainer.spec, never the training code."""

__version__ = "0.1.0"
