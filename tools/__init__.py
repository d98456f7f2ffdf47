"""Tools for working on dmnflow itself (not installed with the package): ``python -m tools.docs``."""
