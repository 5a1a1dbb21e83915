"""The pipelines' domain errors. The pipelines know nothing of the wire: the service's handlers
(backend/service/handlers.py) map these to wire error codes.

- `AvatarNotFound`: no avatar with that id in the store (-> not_found).
- `BadInput`: an array the pipeline cannot use (a camera that is not a rigid transform, ...) (-> bad_array).
- any other `ValueError`: a named refusal of a value (shapes, regions, strengths) (-> invalid_argument).

Raised elsewhere and mapped the same way: `backend.pipelines.model_bundle.ModelError` (a model that cannot
be loaded), `backend.perception.media.PerceptionError` (a photo that cannot be used) and
`backend.sampling.solvers.SamplingCancelled` (the cancel check said stop).
"""
from __future__ import annotations


class AvatarNotFound(LookupError):
    """No avatar with this id is kept (in memory or in the avatar folder)."""


class BadInput(ValueError):
    """An input array the pipeline cannot use; the message names it and what was expected."""
