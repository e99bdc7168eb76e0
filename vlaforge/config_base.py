"""Base class for every typed config model (a leaf module: imports nothing of ours).

Every component owns a pydantic model derived from ``StrictModel``; recipes load into them, never into
loose dicts. Unknown keys are errors (``extra="forbid"``), so a misspelt key cannot be silently ignored;
non-finite floats (``.inf``, ``.nan`` in YAML) are errors in every float field (``allow_inf_nan=False``):
an infinite learning rate or clip range is always a mistake, and NaN compares false with every bound.
The recipe loader turns pydantic's errors into messages with file, line and the closest valid key.
"""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


def _folder_name(v: str) -> str:
    # One path component that stays where it is joined (runs/<name>-<time>, <run>/<stage>/): no separator, no
    # "." / ".." and no leading dot (hidden folders, "..x" look-alikes); ASCII letters, digits, "-", "_" and ".".
    if not v or v.startswith(".") or not all((c.isascii() and c.isalnum()) or c in "-_." for c in v):
        raise ValueError(f"{v!r} is not a folder name: use letters, digits, '-', '_' and '.' (not first), "
                         "no '/' or '..': it names a folder inside runs/")
    return v


# A user-given name that becomes a folder under the run directory (recipe and stage names).
FolderName = Annotated[str, AfterValidator(_folder_name)]
