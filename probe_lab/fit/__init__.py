"""The pytorch backend's math and its Lightning pieces, one job a module:

- `objective`: the objective (sklearn's), its penalty and the preconditioner's coordinates;
- `linear_probe`: `LinearProbe`, float32-accumulating products over half-precision activations;
- `lbfgsb`: scipy's L-BFGS-B as a torch optimizer; `evaluation`: one evaluation (a CUDA graph on a GPU);
- `module`: the LightningModule; `datamodule`: the LightningDataModule, following the `Placement`;
- `trainer`: the Lightning Trainer of one fit, from the user's trainer / callbacks / logger parts.
"""
