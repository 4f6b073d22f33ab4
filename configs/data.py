"""Data-preparation section (placeholder until the data pipeline lands)."""

import ml_collections


def data_section() -> ml_collections.ConfigDict:
    """The `data` section every task config embeds."""
    return ml_collections.ConfigDict(dict(path=""))


def get_config(arg=None) -> ml_collections.ConfigDict:
    """The preparation config for scripts/prepare_data.py."""
    return data_section()
