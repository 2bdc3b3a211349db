"""Predicted training, prefill and decode on GPUs (``tritonlab predict``): an analytic
roofline model of the lab's decoder layer and ops, always labelled as a prediction.

:mod:`~tritonlab.predict.layer` (the layer's kernels, FLOPs, bytes and footprints per
regime), :mod:`~tritonlab.predict.model` (roofline time, bound, power and energy),
:mod:`~tritonlab.predict.targets` (the devices and their ceilings, capacity and power),
:mod:`~tritonlab.predict.points` (predicted rows), :mod:`~tritonlab.predict.verdict` (the
contrast's verdict on predicted rows, per GPU and side by side),
:mod:`~tritonlab.predict.measured`, :mod:`~tritonlab.predict.calibrate` and
:mod:`~tritonlab.predict.against` (runs: fitting the model, checking it) and
:mod:`~tritonlab.predict.run` (a whole prediction and its text). docs/predict.md states the
model and its assumptions. Nothing here imports a Triton kernel.
"""
