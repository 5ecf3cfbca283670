"""Pure modelling logic: training, calibration, evaluation, explanations, abuse scoring."""
