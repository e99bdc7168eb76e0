"""User-facing errors (a leaf module). The CLI prints these without a traceback and exits with ``code``."""


class VlaforgeError(Exception):
    """A mistake the user can fix (bad recipe, missing file, bad argument). Message says what and where."""

    code = 2


class RecipeError(VlaforgeError):
    pass
