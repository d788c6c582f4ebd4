"""Open-Sora 2.0 inference: sizes, prompt suffixes, conditioning types, the pipeline around the flow sampler.

The samplers themselves (math on tensors) are in ``opensora/schedulers/flow_v2.py``; the size tables in
``opensora/datasets/aspect_v2.py``. ``scripts/inference.py`` runs a 2.0 config (one with a
``sampling_option`` section) through :class:`~opensora.inference.v2.pipeline.PipelineV2`.
"""
