"""Pure machine learning: the torch model and its ONNX export, metrics and gates, A/B statistics,
the synthetic data generator, report plots. No database, no storage."""
