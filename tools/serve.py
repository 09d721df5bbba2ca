#!/usr/bin/env python
"""Serve a model package over HTTP on this machine, for a sorting line's camera software.

    python tools/serve.py --package DIR [--host 127.0.0.1] [--port 8000] [--max-upload-mb 20]

POST /predict with an image (a multipart file field, or the image as the body) returns its label map as an indexed
PNG; POST /predict?format=json the fraction of the pixels of each class; GET /health the classes. Binds 127.0.0.1
unless --host and --allow-remote say otherwise. Uploads are never written to disk. The logic:
mask2former/serve/ (launch.py, app.py, uploads.py); docs/deployment.md.
"""

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.serve.launch import main

if __name__ == "__main__":
    main()
