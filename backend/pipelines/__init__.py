"""Pipelines: what the backend does with a model and an avatar, as plain functions and classes.

`generate` (text/photo -> token map), `edit` (text edit, region and auto-region regeneration), `photo`
(a photo -> what it shows of the person), `avatars` (decode, find, render, export), `model_bundle` (a model
package), `store` (avatars in memory or as files). They take a progress callback and a cancel check, raise
the domain errors of `errors.py`, and never import the service (backend/service), which maps them to the wire.
"""
