"""Records (MIMIC-III, VitalDB, synthetic) to labelled 10-s ECG + PPG windows."""
