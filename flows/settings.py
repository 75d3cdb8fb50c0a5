"""The flow's settings: :mod:`attune.operators.settings`, under the name the flows use.

:class:`~attune.operators.settings.Settings` is the one reader of ``ATTUNE_*``
environment variables; it is defined among the dependency-free modules so that the
client library shares it without importing this package.
"""

from attune.operators.settings import (
    Settings,
    default_state_dir,
    env_name,
    mask_url,
    reference_markdown,
)

__all__ = ["Settings", "default_state_dir", "env_name", "mask_url", "reference_markdown"]
