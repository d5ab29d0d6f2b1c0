"""Running a manifest's reconstruction jobs.

:mod:`.runner` selects the jobs, holds the artifact root's lock, skips jobs already done (resume),
enforces ``--timeout`` and hands every outcome to :mod:`.recording`, the one place that writes
``result.json``, the manifest's ``execution_results`` and the notes appended to a job's log. It
drives a backend (:mod:`.backend`): local worker processes (:mod:`.local`) or a Dask cluster
(:mod:`.dask_backend`). Both run each job through :mod:`.worker`, which calls an engine from the
registry (:mod:`.engines.registry`).

This package module imports nothing, so that importing the light registry (as planning does)
never pulls in the runner.
"""
