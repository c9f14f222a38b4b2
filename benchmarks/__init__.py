"""Benchmarks of the suite (``.venv/bin/python -m benchmarks.<name> --help``); a package so that mypy
checks them under one module name each (pyproject.toml, [tool.mypy] files)."""
