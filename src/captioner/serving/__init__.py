"""Stage 7: the web app and HTTP API, the model store, the caption batcher and training jobs."""
