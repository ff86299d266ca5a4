"""The dsync client distribution's source root (see pyproject.toml beside this file).

A package only so that `python -m client` runs the CLI from a checkout; installed, the
importable packages are `dsync_client` and the generated `dsync`.
"""
