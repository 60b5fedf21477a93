"""Abuse tests: one file per attack family, each run against the real parts."""
