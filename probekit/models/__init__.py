"""Shared model utilities, used by the extraction stage, the backbone lab and the pipelines alike.

- ``loading``: loading diffusers/transformers components from local folders (safetensors only, quietly, a
  ``ProbekitError`` naming the folder on failure);
- ``text_conditioning``: prompt conditioning from a plain transformers text encoder + tokenizer;
- ``noise``: noising a clean latent to timestep t (flow-matching sigmas with their shift, DDPM) and the
  per-sample seeded noise;
- ``hooks``: forward hooks that read a DiT block's capture sites.

This package sits below every stage: it imports nothing from ``probekit.extractors``, ``probekit.probes``,
``probekit.reports``, ``probekit.backbone`` or ``probekit.pipelines`` (only ``probekit.errors`` and
``probekit.safety`` from the core), so each of them can import it without a cycle.
"""
