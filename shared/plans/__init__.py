"""Tracking plans: the plan as a model (`model`), Segment's Public API export read into it
(`segment`), the validation of one event against it (`validation`), and where the
deployment's plan is read from and re-read (`source`); a plan checked against the archive, and
drafted from it (`history`)."""
