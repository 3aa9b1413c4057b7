"""rbackup-s3: the S3 backend of rbackup, a plug-in like any third party's.

Registered in the `rbackup.backends` entry point group for `s3://` and
`s3a://` URLs; the engine finds it through rbackup's registry and never
imports it.
"""
from .env import S3Env, S3Settings, parse_s3_url
from .upload import S3Writer, part_size

__all__ = ["S3Env", "S3Settings", "S3Writer", "parse_s3_url", "part_size"]
__version__ = "0.1.0"
