"""User-facing errors.

A `UserError` is bad input the user can fix (bad config key, impossible shape, missing
checkpoint, empty dataset...). The CLI prints its message as one sentence and exits
with status 2, never a traceback; library code raises it and never calls sys.exit.
"""


class UserError(ValueError):
    """Bad input; the message is one sentence that names the fix."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss or gradient norm; the message names the step."""
