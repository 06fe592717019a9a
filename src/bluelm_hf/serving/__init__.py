"""Serving integrations (vLLM). `transformers serve` needs nothing from here: checkpoints carry their code."""
