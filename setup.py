"""Build glue for the cffi extension; metadata lives in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["cgshim/_native/build.py:netlink", "cgshim/_native/build.py:procscan"])
