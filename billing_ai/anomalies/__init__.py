"""Usage anomaly detection. Library entry point: :func:`detect_anomalies` (no Dagster needed)."""

from billing_ai.anomalies.detect import OUTPUT_SCHEMA, DetectorConfig, detect_anomalies, episodes

__all__ = ["OUTPUT_SCHEMA", "DetectorConfig", "detect_anomalies", "episodes"]
