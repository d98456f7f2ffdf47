"""Risk: the ``RiskManager`` node (volatility targeting, position limits, drawdown kill switch)."""

from .manager import RiskManager, vol_target_weights

__all__ = ["RiskManager", "vol_target_weights"]
