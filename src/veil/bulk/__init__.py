"""Bulk anonymization of folders and buckets on an engine other than the local process pool.

Ray Data (:mod:`veil.bulk.ray_engine`) is the one there is; it needs the optional extra
``pip install "veil[ray]"`` and runs the same pipeline as every other face of veil.
"""
