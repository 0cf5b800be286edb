"""`python -m probe_lab.extract`: activations of a Hugging Face model over labelled texts, into a store.

Modules, top-down: `run` (one extraction, resumable), `plan` (chunks and batches), `capture` (which
layers, forward hooks, pooling), `model` (model and tokenizer from a folder or the local cache),
`texts` (CSV, JSONL or Parquet). The settings' schema is `probe_lab.settings.extract`.
"""
