"""Usage forecasting. Library entry points: :func:`forecast_usage` and :func:`select_models` (no Dagster
needed); the Dagster assets live in :mod:`billing_ai.forecasting.assets`."""

from billing_ai.forecasting.forecast import MODELS, OUTPUT_COLUMNS, forecast_usage, select_models

__all__ = ["MODELS", "OUTPUT_COLUMNS", "forecast_usage", "select_models"]
