"""Point-in-time feature engineering: one row per order line, computed as of its order timestamp."""
