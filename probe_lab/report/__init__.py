"""What a person looks at after a run or a sweep: plots, terminal summaries, backend parity, the sweep summary.

Nothing is imported here: `plots` is the only module that imports matplotlib, and `sweep.callback`, which
Hydra instantiates at every start-up, imports it only when the sweep's plot is drawn.
"""
