"""The backend service, the top floor of the backend: `server` (the ZeroMQ ROUTER and its I/O thread),
`queue` (the bounded job queue, the job context and the compute worker), `handlers` (the avatar operations:
request checks, calls into backend/pipelines, domain errors -> wire errors), `config` (ServiceConfig: every
setting of the service), `serving` (`genlca-backend serve`: build, load the model, bind, serve) and `cli`
(`genlca-backend`; its `keys` command loads no torch). Nothing below it (pipelines, models, sampling, avatar,
render) imports it.
"""
