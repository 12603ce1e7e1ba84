"""The counting model: networks and pretrained weights, training configs and recipes, training,
calibration, metrics, evaluation, the model registry and tuning.
"""
