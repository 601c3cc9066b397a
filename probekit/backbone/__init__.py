"""The ShapeWorld backbone lab: the small MM-DiT probekit trains on ShapeWorld and ships as its default.

- ``model``: configurations, tokenizer, building/saving/loading the folder, the shipped weights (package data,
  ``weights/shapeworld-mmdit``) and the random-init control;
- ``train``: ``probekit train-backbone`` (rectified flow, resumable, EMA exports);
- ``sampling``: Euler sampling with classifier-free guidance (``probekit sample``, the generate pipeline);
- ``judge``: a colour-and-shape judge of samples; ``prompt_sensitivity``: the shape word's loss gain;
- ``tiny``: a tiny random MM-DiT for tests and controls.

The extractors that read these models are in ``probekit.extractors.shapeworld``.
"""
