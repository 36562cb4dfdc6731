"""A detect-secrets plugin that finds apikey keys, checksum included.

Use it with detect-secrets 1.x (``pip install detect-secrets``)::

    detect-secrets scan --plugin scanners/detect_secrets_apikey.py .

or in ``.pre-commit-config.yaml``::

    - repo: https://github.com/Yelp/detect-secrets
      rev: v1.5.0
      hooks:
        - id: detect-secrets
          args: ["--plugin", "scanners/detect_secrets_apikey.py"]

A key is ``<prefix><body>``; the body is 58 base62 characters whose last six
are the CRC-32 (IEEE, as zlib computes it) of everything before them,
written big-endian in base62. A match is reported only when that checksum
holds, so mistyped keys and random look-alikes of the right shape are not
reported. The keyed tag (the eight characters before the checksum) needs
the service's secret and can only be checked by the service itself (its
leak endpoints do).

Add your application's own prefixes to ``PREFIXES``.
"""

import re
import zlib

from detect_secrets.plugins.base import RegexBasedDetector

#: The built-in prefixes; add the ones your service registers.
PREFIXES = ("sk_live_", "sk_test_", "kwi_sk_")

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LEN = 58
CHECKSUM_LEN = 6


def checksum_ok(key: str) -> bool:
    """Whether the key's last six characters are the CRC-32 of the rest."""
    if len(key) < BODY_LEN or any(c not in BASE62 for c in key[-BODY_LEN:]):
        return False
    value = 0
    for c in key[-CHECKSUM_LEN:]:
        value = value * 62 + BASE62.index(c)
    return value == zlib.crc32(key[:-CHECKSUM_LEN].encode("ascii"))


class ApiKeyDetector(RegexBasedDetector):
    """Scans for apikey secret keys (prefix, 58 base62 characters, CRC-32)."""

    secret_type = "apikey secret key"

    denylist = (
        re.compile(
            r"(?<![0-9A-Za-z_])((?:"
            + "|".join(re.escape(p) for p in PREFIXES)
            + r")[0-9A-Za-z]{58})(?![0-9A-Za-z])"
        ),
    )

    def analyze_string(self, string):
        for match in super().analyze_string(string):
            if checksum_ok(match):
                yield match
