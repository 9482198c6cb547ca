"""Surrogates: BoTorch models that fit themselves to a campaign's data."""

from surrogates.base import Surrogate, SurrogateError
from surrogates.gp import GPSurrogate, SamplesPaths

__all__ = ["GPSurrogate", "SamplesPaths", "Surrogate", "SurrogateError"]
