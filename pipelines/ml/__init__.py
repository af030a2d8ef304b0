"""Pure machine learning: the torch model and its ONNX export, metrics and gates, label semantics,
A/B statistics, the synthetic data generator, report plots. No database, no storage."""
