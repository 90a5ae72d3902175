"""The contracts between the offline, offline-to-online and online layers.

Everything two layers must agree on lives here, once: artifact paths (``paths``), column names and
dtypes (``schema``), how artifacts are written atomically with their metadata (``artifacts``), the
ranking feature specification and how a feature row is assembled (``feature_spec``), the Redis key
layout (``redis_keys``) and the ranking model's signature (``model_signature``). This package imports
none of the layers.
"""
