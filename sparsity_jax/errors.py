"""User-facing errors.

A `UserError` is bad input the user can fix (bad config key, impossible shape, missing
checkpoint, empty dataset...). The CLI prints its message as one sentence and exits
with status 2, never a traceback; library code raises it and never calls sys.exit.
"""


class UserError(ValueError):
    """Bad input; the message is one sentence that names the fix."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss or gradient norm; the message names the step."""


def comma_list(text, cast=float, what: str = "the values", allow_empty: bool = False) -> list:
    """Parses '1,5,10' (spaces and empty items ignored) with `cast`; bad input, or empty
    input unless `allow_empty`, is a UserError that names the option, e.g.
    comma_list(args.k, int, "--k")."""
    try:
        values = [cast(x.strip()) for x in str(text).split(",") if x.strip()]
    except ValueError:
        kind = "integers" if cast is int else "numbers"
        raise UserError(f"Pass {what} as comma-separated {kind}, e.g. 1,5,10; got {text!r}.") from None
    if not values and not allow_empty:
        raise UserError(f"Pass at least one value for {what}.")
    return values
