"""Base class for every typed config model (a leaf module: imports nothing of ours).

Every component owns a pydantic model derived from ``StrictModel``; recipes load into them, never into
loose dicts. Unknown keys are errors (``extra="forbid"``), so a misspelt key cannot be silently ignored;
the recipe loader turns pydantic's errors into messages with file, line and the closest valid key.
"""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
