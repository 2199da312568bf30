"""Tiny configurations shared by the tests."""

from __future__ import annotations

from carl.config import ModelConfig, from_dict


def tiny_model_config(order: str = "masked", score: dict | None = None, conditioner: str = "class", **backbone) -> ModelConfig:
    return from_dict(
        ModelConfig,
        {
            "tokenizer": {"name": "patch", "shape": [8, 2], "patch": [1], "normalize": False},
            "conditioner": {"name": conditioner, **({"num_classes": 4, "buffer": 2} if conditioner == "class" else {})},
            "order": {"name": order},
            "backbone": {"width": 16, "depth": 2, "heads": 2, "dropout": 0.0, "attn_dropout": 0.0, **backbone},
            "score": score or {"name": "energy", "depth": 1, "width": 16, "noise_dim": 4},
        },
    )
