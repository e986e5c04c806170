"""Example transformers (`hybridserve package --transformer text`)."""
