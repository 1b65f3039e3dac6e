"""The nst-jax web app: upload a photo and a painting, watch it being painted, download the result.

`app.create_app(...)` builds the FastAPI application; `jobs.JobStore` keeps jobs in SQLite (WAL) with their
files under a data folder; `worker.Worker` is the one thread that owns the accelerator and runs queued jobs,
batching compatible ones into one vmapped step. `nst-jax serve` starts it (see docs/web.md).
"""
