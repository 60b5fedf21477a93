"""Tracking plans: the plan as a model (`model`), Segment's Public API export read into it
(`segment`), and the validation of one event against it (`validation`)."""
