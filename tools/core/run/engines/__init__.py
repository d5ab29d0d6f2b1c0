"""Reconstruction engines: the interface (:mod:`.base`), their option records (:mod:`.options`),
the registry of engines and their algorithms (:mod:`.registry`) and the engines themselves
(:mod:`.ptychi`). Imports nothing, so importing the registry stays light."""
