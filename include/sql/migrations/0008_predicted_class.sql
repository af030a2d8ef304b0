-- A multiclass model's answer beside its `score` (the most likely class's probability): the class
-- it predicted and every class's probability, in the order of the pipeline's classes (the
-- contract's `allowed` values of its label). NULL for a binary or regression model.
ALTER TABLE inference_requests ADD COLUMN IF NOT EXISTS predicted_class text;
ALTER TABLE inference_requests ADD COLUMN IF NOT EXISTS probabilities real[];
