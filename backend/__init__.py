"""GenLCA backend: models, sampling, avatar core, renderer, pipelines and the ZeroMQ service."""
