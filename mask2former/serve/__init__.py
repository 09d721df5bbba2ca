"""The local HTTP service of a model package (tools/serve.py): the FastAPI app (`app.py`), the checks of an upload
(`uploads.py`) and the tool's command line (`launch.py`)."""
