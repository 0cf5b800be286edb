"""`python -m probe_lab [overrides]`: compose the config with Hydra and train one probe."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from probe_lab.config import register_configs
from probe_lab.errors import ProbeLabError
from probe_lab.run import run

register_configs()


@hydra.main(version_base=None, config_path="pkg://probe_lab.conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the validation AUROC, for Hydra sweepers that optimize it."""
    try:
        result = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ProbeLabError as err:
        print(f"probe_lab: error: {err}", file=sys.stderr)
        sys.exit(2)
    return float(result.metrics["val"]["auroc"])


if __name__ == "__main__":
    main()
