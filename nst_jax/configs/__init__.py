"""Configs as data: `default.get_config()` and variants that override a few fields."""
