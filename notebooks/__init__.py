"""Example notebooks (not a library). This file makes ``notebooks/conftest.py`` import as
``notebooks.conftest``, so that it does not replace ``tests/conftest.py`` as the module
``conftest`` that test modules import helpers from."""
