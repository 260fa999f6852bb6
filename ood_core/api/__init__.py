"""The Python API for one's own model: ``evaluate`` (every method, tuned and scored as the study does)
and ``Detector`` (one method: fit, then score), with the checks of the model and the inputs.
"""
