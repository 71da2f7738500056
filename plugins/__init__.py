"""Lightcell plugin contract, C SDK and example plugins (build them with plugins/build.py)."""
