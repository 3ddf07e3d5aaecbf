"""The robustness corpus behind `bench/robustness_corpus.py`.

`generate` builds and finds the cases (ONNX's backend test models with their inputs), `classify`
runs one case through one transform and says what happened, `pool` runs many cases in restartable
worker processes so that a case that crashes or hangs ONNX Runtime costs one result, not the run.
"""
