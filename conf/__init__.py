"""probe_lab's Hydra configs. A package so that Hydra finds them as `pkg://probe_lab.conf`, from a wheel
or an editable install alike."""
