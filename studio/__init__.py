"""YOLO ControlNet Studio's engine, in three layers whose imports point one way: serving -> engine -> core.

- `core/`: plain data and pure image work, no torch (requests, settings, catalog, images, control maps, run cards).
- `engine/`: torch, diffusers and Ultralytics (model loading, denoising with its fallbacks, fast path, LoRAs).
- `serving/`: what many callers share (the job queue, the page's preview cache, prefetch).

The entry points sit beside the package: `app.py` (the page), `inference_pipeline.py` (the Python API),
`attention_backend.py` (the backend report) and `launch.py` (start and tunnel).
"""
