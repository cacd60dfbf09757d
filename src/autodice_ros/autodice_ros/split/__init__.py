"""Splitting: a mapping -> sub-models (:mod:`.layerwise`) -> a deployment bundle (:mod:`.bundle`)."""
