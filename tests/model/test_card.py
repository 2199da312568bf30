"""The model card (:mod:`carl.model.card`) of a trained model folder, with its requirements."""

import json


def test_model_folder_has_card_and_requirements(six_steps):
    card = (six_steps / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: carl\ntags:") and "score-energy" in card and "order-causal" in card
    assert "| steps | 6 |" in card and ("![samples](samples.png)" in card) == (six_steps / "samples.png").exists()
    req = json.loads((six_steps / "carl.json").read_text())
    assert req["plugins"] == {} and "carl" in req  # built-ins only
