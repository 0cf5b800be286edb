"""The end of a Hydra multirun: every job's folder read back into a row, written as summary files and printed.

`job` is what one job writes into its folder and how that folder reads back; `collect` works across the
jobs (their order, the swept keys, the best job, backend pairs); `render` writes the csv, the markdown and
the terminal lines; `callback` is the Hydra callback that does it all when the multirun ends.
"""
