"""Loading Sat2City VAEs saved under their earlier names.

Before the classes took their family's name, ``scaling_factor`` (and ``appearance_scaling_factor``)
held the latents' measured std, and the pipeline decoded ``latents * scaling_factor``. Today they
mean what they mean in diffusers, ``1 / std``. A config whose ``_class_name`` is an earlier name is
converted on load, so folders and Hub repos saved before give the same outputs.
"""

from __future__ import annotations

from typing import Any


class LegacyScalingMixin:
    """Inverts ``_legacy_scaling_keys`` of a config saved under one of ``_legacy_names``."""

    _legacy_names: tuple[str, ...] = ()
    _legacy_scaling_keys: tuple[str, ...] = ()

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs):
        if config_dict.get("_class_name") in cls._legacy_names:
            config_dict = dict(config_dict)
            for key in cls._legacy_scaling_keys:
                if key in config_dict:
                    config_dict[key] = 1.0 / float(config_dict[key])
        return super().extract_init_dict(config_dict, **kwargs)
