"""activessf-engine: Cell Region Filtering and Active Sample Selection (ActiveSSF) at scale."""

__version__ = "0.1.0"
