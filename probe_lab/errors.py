"""The one exception type probe_lab raises for bad input or bad settings.

Its message is a single line that names the file or setting at fault; the command line prints it
without a traceback and exits non-zero.
"""


class ProbeLabError(Exception):
    """Bad input data, a bad file or an invalid setting, described in one line."""
