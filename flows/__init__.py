"""Prefect flows around the engine-free loop (scheduling, artifacts, scale-out).

The loop in :mod:`loop` runs as plain Python; this package is where Prefect wraps its
stages. Nothing here is required to run a campaign.

* :mod:`flows.campaign` — :func:`~flows.campaign.campaign_flow`, a campaign as a flow.
* :mod:`flows.otf` — :func:`~flows.otf.otf_md_flow`, on-the-fly MD training as a flow.
* :mod:`flows.tasks` — the loop's stages as tasks (fit, propose, evaluate, record).
* :mod:`flows.artifacts` — the batch table, budget progress and end-of-run report.
* :mod:`flows.execution` — the ``[execution]`` section and the task runner (threads or Dask).
* :mod:`flows.approval` — the optional human approval gate before each batch.
* :mod:`flows.deploy`, :mod:`flows.cli` — scheduled deployments and ``alloop deploy``.
"""
