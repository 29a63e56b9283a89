"""biasbench: measure and mitigate shortcut learning in image classifiers."""
__version__ = "0.1.0"

from .errors import BiasbenchError  # noqa: E402

__all__ = ["BiasbenchError", "__version__"]
