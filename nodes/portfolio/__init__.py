"""Portfolio: the ``PortfolioOptimizer`` node (target weights -> orders, with a book of holdings)."""

from .optimizer import PortfolioOptimizer, round_lot

__all__ = ["PortfolioOptimizer", "round_lot"]
