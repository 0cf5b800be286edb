"""`python -m probe_lab.extract model.path=M dataset.path=D.csv layers=[...] pooling=last output=STORE`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from probe_lab import stopping
from probe_lab.cli_help import answer_help_or_version, extract_help
from probe_lab.errors import ProbeLabError
from probe_lab.settings.extract import ExtractConfig
from probe_lab.settings.schema import register_configs, to_settings
from probe_lab.stopping import Stopped, sigterm_stops_the_run

register_configs()


@hydra.main(version_base=None, config_path="pkg://probe_lab.conf", config_name="extract")
def _hydra_main(cfg: DictConfig) -> None:
    from probe_lab.extract.run import extract

    try:
        with sigterm_stops_the_run():
            summary = extract(to_settings(cfg, ExtractConfig))
    except ProbeLabError as err:
        print(f"probe_lab.extract: error: {err}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Stopped) as err:
        how = "stopped by SIGTERM" if isinstance(err, Stopped) else "interrupted"
        print(
            f"probe_lab.extract: {how}; its complete shards are kept: run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(stopping.EXIT_CODE if isinstance(err, Stopped) else 130)
    print(summary.line())


def main() -> None:
    if not answer_help_or_version(sys.argv[1:], "probe_lab.extract", extract_help):
        _hydra_main()


if __name__ == "__main__":
    main()
