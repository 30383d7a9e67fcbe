"""Predictions over splits, BP metrics and grades, reports and plots."""
